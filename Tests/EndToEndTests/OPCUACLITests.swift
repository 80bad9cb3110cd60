import Foundation
import Testing
import TestSupport

/// `tibet-twin opcua …` against a real asyncua server the test starts.
@Suite("tibet-twin opcua", .serialized)
struct OPCUACLITests {
    @Test("read: value, StatusCode and both timestamps per node; exit 1 when one is not Good")
    func read() throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        let (code, out, err) = try runTibetTwin(["opcua", "read", server.endpoint, "ns=2;s=Crane01.PosX", "nsu=urn:tibet-twin:test;s=Crane01.Name"])
        #expect(code == 0, "\(err)")
        let lines = out.split(separator: "\n").map(String.init)
        #expect(lines.count == 2)
        #expect(lines[0].hasPrefix("ns=2;s=Crane01.PosX  12.5  Good  source=20"))
        #expect(lines[0].contains(" server=20"))
        #expect(lines[1].hasPrefix("nsu=urn:tibet-twin:test;s=Crane01.Name  \"crane one\"  Good"))

        let (code2, out2, _) = try runTibetTwin(["opcua", "read", server.endpoint, "ns=2;s=Crane01.Stale", "ns=2;s=Crane01.Broken", "ns=2;s=Nope"])
        #expect(code2 == 1)
        #expect(out2.contains("ns=2;s=Crane01.Stale  3.0  UncertainLastUsableValue (0x40900000)"))
        #expect(out2.contains("BadSensorFailure (0x808C0000)"))
        #expect(out2.contains("ns=2;s=Nope  -  BadNodeIdUnknown (0x80340000)  source=- server=-"))
    }

    @Test("browse: a tree with NodeIds, browse names, node classes and data types")
    func browse() throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        let (code, out, err) = try runTibetTwin(["opcua", "browse", server.endpoint, "--depth", "2"])
        #expect(code == 0, "\(err)")
        #expect(out.hasPrefix("i=85\n"))
        #expect(out.contains("\n  ns=2;s=Crane01  2:Crane01  Object\n"))
        #expect(out.contains("\n    ns=2;s=Crane01.PosX  2:PosX  Variable  Double\n"))
        #expect(out.contains("\n    ns=2;s=Crane01.Levels  2:Levels  Variable  Double\n"))
        #expect(out.contains("\n    ns=2;s=Crane01.Name  2:Name  Variable  String\n"))
        #expect(out.contains("\n  i=2253  Server  Object\n"))
        #expect(!out.contains("\n    i=2254"))  // the Server object is listed, not opened

        let (code2, out2, _) = try runTibetTwin(["opcua", "browse", server.endpoint, "ns=2;s=Many", "--depth", "1"])
        #expect(code2 == 0)
        #expect(out2.split(separator: "\n").count == 41)
    }

    @Test("bad input exits 2, an unreachable server 1, both with a reason")
    func failures() throws {
        let (c1, _, e1) = try runTibetTwin(["opcua", "read", "opc.tcp://127.0.0.1:4840/", "ns=x;s=a"])
        #expect(c1 == 2)
        #expect(e1.contains("not a NodeId: ns=x;s=a"))
        let (c2, _, e2) = try runTibetTwin(["opcua", "read", "http://127.0.0.1/", "i=85"])
        #expect(c2 == 2)
        #expect(e2.contains("expected opc.tcp://"))
        let (c3, _, e3) = try runTibetTwin(["opcua", "browse", "opc.tcp://127.0.0.1:\(closedPort())/"])
        #expect(c3 == 1)
        #expect(e3.contains("connection refused (ECONNREFUSED)"))
    }

    @Test("watch: subscribed, initial values, a change, the same value rewritten; stops after --count")
    func watch() throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        let child = try Child(binaryURL().path, ["opcua", "watch", server.endpoint, "ns=2;s=Crane01.PosX", "ns=2;s=Crane01.Mode",
                                                 "--sampling-ms", "50", "--count", "4"], name: "opcua watch")
        defer { child.stop() }
        #expect(child.waitForLine(timeout: 30) { $0 == "subscribed ns=2;s=Crane01.PosX=Good ns=2;s=Crane01.Mode=Good" } != nil, "\(child.transcript)")
        #expect(child.waitForLine(timeout: 30) { $0.hasPrefix("ns=2;s=Crane01.PosX  12.5  Good  source=20") } != nil, "\(child.transcript)")
        #expect(child.waitForLine(timeout: 30) { $0.hasPrefix("ns=2;s=Crane01.Mode  1  Good") } != nil, "\(child.transcript)")
        try server.command("set PosX double 40.5")
        #expect(child.waitForLine(timeout: 30) { $0.hasPrefix("ns=2;s=Crane01.PosX  40.5  Good") } != nil, "\(child.transcript)")
        try server.command("set PosX double 40.5")  // same value, new SourceTimestamp: a line of its own
        #expect(child.waitForExit(timeout: 30) == 0, "\(child.transcript)")
        #expect(child.stdoutLines.filter { $0.hasPrefix("ns=2;s=Crane01.PosX  40.5  Good") }.count == 2)
    }

    @Test("security: opcua cert, a refused server with the trust command to run, that command, then read over SignAndEncrypt")
    func secureCommissioning() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-twin-cli-sec-\(UUID().uuidString)").path
        let serverCerts = try makeServerCertificate()
        defer { try? FileManager.default.removeItem(atPath: dir); try? FileManager.default.removeItem(atPath: serverCerts) }
        let (c0, out0, e0) = try runTibetTwin(["opcua", "cert", "--out", dir + "/me", "--uri", "urn:guard7:tibet-twin", "--host", "guard7"])
        #expect(c0 == 0, "\(e0)")
        #expect(out0.contains("application URI  urn:guard7:tibet-twin"))
        let (c0b, _, e0b) = try runTibetTwin(["opcua", "cert", "--out", dir + "/me"])
        #expect(c0b == 1)
        #expect(e0b.contains("--force"))

        let server = try OPCUAPeer.asyncua(certificateDirectory: serverCerts)
        defer { server.stop() }
        let security = ["--security", "Basic256Sha256", "--mode", "SignAndEncrypt", "--cert", dir + "/me/cert.der",
                        "--key", dir + "/me/key.pem", "--trust-dir", dir + "/trusted"]
        let (c1, _, e1) = try runTibetTwin(["opcua", "read", server.endpoint, "ns=2;s=Crane01.PosX"] + security)
        #expect(c1 == 1)
        #expect(e1.contains("is not trusted"))
        let start = try #require(e1.range(of: "tibet-twin opcua trust "))
        let end = try #require(e1.range(of: "   (or: cp"))
        let command = e1[start.upperBound..<end.lowerBound].split(separator: " ").map(String.init)
        #expect(command.count == 3 && command[1] == "--trust-dir")
        let (c2, out2, e2) = try runTibetTwin(["opcua", "trust"] + command)
        #expect(c2 == 0, "\(e2)")
        #expect(out2.hasPrefix("trusted  "))

        let (c3, out3, e3) = try runTibetTwin(["opcua", "read", server.endpoint, "ns=2;s=Crane01.PosX"] + security)
        #expect(c3 == 0, "\(e3)")
        #expect(out3.hasPrefix("ns=2;s=Crane01.PosX  12.5  Good"))

        let (c4, out4, _) = try runTibetTwin(["opcua", "endpoints", server.endpoint])
        #expect(c4 == 0)
        #expect(out4.contains("security=SignAndEncrypt/Basic256Sha256"))
        #expect(out4.contains("cert-sha1="))

        let (c5, _, e5) = try runTibetTwin(["opcua", "read", server.endpoint, "i=2258", "--security", "Basic256Sha256"])
        #expect(c5 == 2)
        #expect(e5.contains("--cert, --key"))
    }
}
