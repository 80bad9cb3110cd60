import Foundation
import TestSupport
import Testing

@Suite("Logs under systemd")
struct JournalLogTests {
    /// With `$JOURNAL_STREAM` set (as systemd sets it when stderr is the journal), every stderr
    /// line of `run` starts with its syslog priority, so `journalctl -p warning` filters; a PLC
    /// that cannot be reached is a warning (<4>) naming the device in logfmt.
    @Test func runPrefixesEveryLineWithItsPriority() async throws {
        let rig = try ApplianceRig(maps: ["crane-01": rigMapYAML(port: closedPort())])
        try await rig.start(environment: ["JOURNAL_STREAM": "8:12345"])
        let child = try #require(rig.child)
        #expect(await eventually(within: 20) { child.stderrLines.contains { $0.hasPrefix("<4>tibet-twin.poller: ") && $0.contains("device=crane-01") } },
                "\(rig.transcript)")
        _ = await rig.terminate()
        let lines = child.stderrLines.filter { !$0.isEmpty }
        #expect(!lines.isEmpty)
        for line in lines {
            #expect(line.range(of: #"^<[2-7]>tibet-twin(\.[a-z.]+)?: "#, options: .regularExpression) != nil, "\(line)")
        }
    }
}
