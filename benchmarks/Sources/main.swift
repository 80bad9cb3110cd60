// `make bench`: each capability's figures beside its named baseline, measured in the same run.
// Each capability adds one file with a `BenchSuite` and one line to `suites` below.
// `tibet-twin-bench [NAME…]` runs the named suites only.

/// One capability's benchmark: prints its figures and the baseline's, measured in the same run.
protocol BenchSuite {
    var name: String { get }
    func run() async throws
}

let suites: [any BenchSuite] = [
    PollerBench(),
    TwinFeedBench(),
    InterlockBench(),
    AuditBench(),
    GuardBench(),
    MapsBench(),
    SystemBench(),
]

let wanted = Set(CommandLine.arguments.dropFirst())
for suite in suites where wanted.isEmpty || wanted.contains(suite.name) {
    print("== \(suite.name) ==")
    try await suite.run()
    print("")
}
