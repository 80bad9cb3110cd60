import Foundation
import Testing
import TibetTwin
#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// `tibet-twin run` and `tibet-twin reset` with the reset guarded (docs/operations.md#resets).
@Suite("Reset over HTTP, end to end", .serialized)
struct ResetCLITests {
    /// The rig's config with its `http:` line replaced.
    func setHTTP(_ rig: ApplianceRig, _ http: String) throws {
        let config = try String(contentsOfFile: rig.dir.file("tibet-twin.yaml"), encoding: .utf8)
            .replacingOccurrences(of: "http: {listen: 127.0.0.1:0}", with: http)
        try rig.dir.write("tibet-twin.yaml", config)
    }

    @Test func aNetworkListenerWithoutATokenDoesNotStart() throws {
        let rig = try ApplianceRig(maps: ["crane-01": rigMapYAML(port: closedPort())])
        try setHTTP(rig, "http:\n  listen: 0.0.0.0:0")
        let (code, out, err) = try runTibetTwin(["run", "--config", rig.dir.file("tibet-twin.yaml")])
        #expect(code == 2)
        #expect(out.isEmpty, "nothing served")
        #expect(err.split(separator: "\n").count == 1, "\(err)")
        #expect(err.contains("tibet-twin.yaml:9:11: http.listen: 0.0.0.0:0 is not a loopback address"), "\(err)")
        #expect(err.contains("http.reset_token_file"), "\(err)")
        #expect(!FileManager.default.fileExists(atPath: rig.dir.file("audit")), "the audit chain was not even opened")

        // A token file every local user can read is refused the same way, naming the key.
        try rig.dir.write("reset.token", "0123456789abcdef0123456789abcdef\n")
        chmod(rig.dir.file("reset.token"), 0o644)
        try setHTTP(rig, "http:\n  listen: 0.0.0.0:0")
        let config = try String(contentsOfFile: rig.dir.file("tibet-twin.yaml"), encoding: .utf8)
            .replacingOccurrences(of: "listen: 0.0.0.0:0", with: "listen: 0.0.0.0:0\n  reset_token_file: reset.token")
        try rig.dir.write("tibet-twin.yaml", config)
        let (mcode, _, merr) = try runTibetTwin(["run", "--config", rig.dir.file("tibet-twin.yaml")])
        #expect(mcode == 2)
        #expect(merr.contains("tibet-twin.yaml:10:21: http.reset_token_file: "), "\(merr)")
        #expect(merr.contains("mode 0644"), "\(merr)")
    }

    @Test func resetWithAToken() async throws {
        let rig = try ApplianceRig(maps: ["crane-01": rigMapYAML(port: closedPort())])
        try rig.dir.write("reset.token", "e2e-token-0123456789abcdef\n")
        chmod(rig.dir.file("reset.token"), 0o640)
        try setHTTP(rig, "http: {listen: 127.0.0.1:0, reset_token_file: reset.token}")
        try await rig.start()
        #expect(await eventually(within: 10) { rig.transcript.contains("resets: authenticated") }, "\(rig.transcript)")

        // From the config: the token is read from http.reset_token_file and sent.
        let config = rig.dir.file("tibet-twin.yaml")
        let (ok, out, err) = try runTibetTwin(["reset", "crane-01", "--config", config, "--url", rig.url])
        #expect(ok == 0, "\(out)\(err)")
        #expect(out.contains("nothing was latched"), "\(out)")
        // --token-file works without the config.
        let (tf, _, tferr) = try runTibetTwin(["reset", "crane-01", "--url", rig.url, "--token-file", rig.dir.file("reset.token")])
        #expect(tf == 0, "\(tferr)")
        // Without the token: refused.
        let (no, _, noerr) = try runTibetTwin(["reset", "crane-01", "--url", rig.url])
        #expect(no == 1)
        #expect(noerr.contains("Bearer"), "\(noerr)")
        // A wrong token file.
        try rig.dir.write("wrong.token", "not-the-token-0123456789\n")
        chmod(rig.dir.file("wrong.token"), 0o600)
        let (wrong, _, _) = try runTibetTwin(["reset", "crane-01", "--url", rig.url, "--token-file", rig.dir.file("wrong.token")])
        #expect(wrong == 1)
        #expect(await rig.terminate() == 0)
    }

    @Test func withoutATokenLoopbackResetsStillWork() async throws {
        let rig = try ApplianceRig(maps: ["crane-01": rigMapYAML(port: closedPort())])
        try await rig.start()
        #expect(await eventually(within: 10) { rig.transcript.contains("resets: NOT authenticated") }, "\(rig.transcript)")
        let (ok, out, err) = try runTibetTwin(["reset", "crane-01", "--url", rig.url])
        #expect(ok == 0, "\(out)\(err)")
        #expect(await rig.terminate() == 0)
    }
}
