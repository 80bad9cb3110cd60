// `make bench`: each capability's figures beside its named baseline, measured in the same run.
// Each capability adds one file with a `BenchSuite` and one line to `suites` below.
// `tibet-twin-bench [NAME…]` runs the named suites only; a name that is none of them is an
// error listing the names.

import Foundation
import Platform

/// One capability's benchmark: prints its figures and the baseline's, measured in the same run.
protocol BenchSuite {
    var name: String { get }
    func run() async throws
}

let suites: [any BenchSuite] = [
    PollerBench(),
    FieldbusBench(),
    TwinFeedBench(),
    InterlockBench(),
    AuditBench(),
    GuardBench(),
    MapsBench(),
    SystemBench(),
    OPCUABench(),
    MQTTBench(),
    OPCUATwinBench(),
]

let wanted = Set(CommandLine.arguments.dropFirst())
let unknown = wanted.subtracting(suites.map(\.name))
if !unknown.isEmpty {
    let names = suites.map(\.name).joined(separator: ", ")
    try? SystemCall.writeAll(2, Array("tibet-twin-bench: no suite named \(unknown.sorted().joined(separator: ", ")); the suites are \(names)\n".utf8))
    exit(2)
}
for suite in suites where wanted.isEmpty || wanted.contains(suite.name) {
    print("== \(suite.name) ==")
    try await suite.run()
    print("")
}
