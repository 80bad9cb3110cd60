import Foundation
import Testing
import TibetTwin

/// `audit verify` on a segment cut mid-line (issue 17): only the last segment's tail is ever
/// repaired by the store, so a cut or garbage at the end of an earlier segment is lost records
/// or tampering, never "torn … moved aside".
@Suite("audit verify: cuts inside the chain")
struct AuditVerifyCutTests {
    @Test func aCutInsideAnEarlierSegmentIsLossNotATornTail() throws {
        let fx = try AuditCLIFixture()
        let (lc, _, lerr) = try runTibetTwin(["audit", "_load", fx.dir, "--key", fx.key, "--count", "200", "--threads", "1",
                                              "--segment-bytes", "20000", "--node", "guard-01"])
        #expect(lc == 0, "\(lerr)")
        let segments = try fx.segments()
        try #require(segments.count >= 3, "\(segments.map(\.file))")
        // Garbage in place of the first segment's last 40 bytes (its newline among them).
        let first = fx.dir + "/" + segments[0].file
        var bytes = segments[0].bytes
        let wholeLines = ChainVerifier.split(bytes).lines.count
        bytes.removeLast(40)
        bytes += Array("garbage".utf8)
        try Data(bytes).write(to: URL(fileURLWithPath: first))
        let (code, out, _) = try runTibetTwin(["audit", "verify", fx.dir])
        #expect(code == 1)
        #expect(out.hasPrefix("\(first):\(wholeLines): link: ends in "), "\(out)")
        #expect(out.contains("not the last segment") && out.contains("records were lost here or the file was tampered with"), "\(out)")
        #expect(!out.contains("moves it aside"), "\(out)")

        // The same cut in the last segment is the torn tail the store repairs.
        try Data(segments[0].bytes).write(to: URL(fileURLWithPath: first))
        let last = fx.dir + "/" + segments.last!.file
        var tail = segments.last!.bytes
        tail.removeLast(10)
        try Data(tail).write(to: URL(fileURLWithPath: last))
        let (code2, out2, _) = try runTibetTwin(["audit", "verify", fx.dir])
        #expect(code2 == 1)
        #expect(out2.hasPrefix("\(last):") && out2.contains(": torn: ") && out2.contains("moves it aside"), "\(out2)")
    }
}
