import Appliance
import Foundation
import TibetTwin
import Yams

/// Parse time of the six example maps: `MapLoader.parse` (YAML, validation, defaults) and
/// `MapFiles.load` (plus file reads, SHA-256, cross-check), beside the baseline of Yams alone
/// composing the same texts into nodes (with its default resolver, and with the basic one the
/// loader uses) — the share that validation adds on top of YAML parsing. Figures are thread CPU
/// time, so they hold on a busy machine.
struct MapsBench: BenchSuite {
    let name = "MapsBench"

    func run() async throws {
        let dir = "maps/"
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".yaml") }.sorted()
        let texts = try files.map { (dir + $0, try String(contentsOfFile: dir + $0, encoding: .utf8)) }
        let bytes = texts.reduce(0) { $0 + $1.1.utf8.count }
        print("\(texts.count) maps, \(bytes) bytes of YAML")

        let rounds = 200
        func measure(_ label: String, _ body: () throws -> Void) rethrows {
            for _ in 0..<10 { try body() }  // warm-up
            var samples: [Double] = []
            for _ in 0..<rounds {
                let t0 = threadCPUTimeNs()
                try body()
                samples.append(Double(threadCPUTimeNs() - t0) / 1000)
            }
            samples.sort()
            let median = samples[samples.count / 2], p99 = samples[samples.count * 99 / 100]
            print("\(label.padding(toLength: 46, withPad: " ", startingAt: 0)) median \(fmt(median)) µs  p99 \(fmt(p99)) µs CPU (all six)")
        }
        try measure("baseline: Yams.compose, default resolver") {
            for (_, t) in texts { _ = try Yams.compose(yaml: t) }
        }
        try measure("baseline: Yams.compose, basic resolver") {
            for (_, t) in texts { _ = try Yams.compose(yaml: t, .basic) }
        }
        try measure("MapLoader.parse (YAML + validation)") {
            for (f, t) in texts { _ = try MapLoader.parse(yaml: t, file: f) }
        }
        try measure("MapFiles.load (files, SHA-256, cross-check)") {
            _ = try MapFiles.load(paths: [dir])
        }
    }

    private func fmt(_ x: Double) -> String { String(format: "%.1f", x) }

    /// CPU time of this thread: on a machine shared with other builds, wall time measures the
    /// neighbours; CPU time measures the work.
    private func threadCPUTimeNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
