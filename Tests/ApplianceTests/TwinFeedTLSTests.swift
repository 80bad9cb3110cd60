import Foundation
import Testing
@testable import Appliance
import TibetTwin
import TestSupport

/// Throwaway PKI made with the `openssl` command line at test time: a CA with a server and a
/// client certificate, and a second CA (the "other plant") with its own client certificate.
struct TestPKI {
    let dir: String

    var caCert: String { dir + "/ca.pem" }
    var serverCert: String { dir + "/server.pem" }
    var serverKey: String { dir + "/server.key" }
    var clientCert: String { dir + "/client.pem" }
    var clientKey: String { dir + "/client.key" }
    var otherClientCert: String { dir + "/other-client.pem" }
    var otherClientKey: String { dir + "/other-client.key" }

    init() throws {
        dir = Twin.tempDir()
        let script = """
            set -e
            cd "$1"
            key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
            ca() { key "$1.key"; openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$1" \\
                     -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign; }
            leaf() {  # name, CA, extensions
                key "$1.key"
                openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$1"
                printf '%s\\n' "$3" > "$1.ext"
                openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" -days 2 -extfile "$1.ext" 2>/dev/null
            }
            ca ca
            ca other-ca
            leaf server ca "subjectAltName=IP:127.0.0.1
            extendedKeyUsage=serverAuth"
            leaf client ca "extendedKeyUsage=clientAuth"
            leaf other-client other-ca "extendedKeyUsage=clientAuth"
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", script, "sh", dir]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw SimpleError("openssl could not make the test certificates (exit \(p.terminationStatus))") }
    }

    func remove() { try? FileManager.default.removeItem(atPath: dir) }

    func files(cert: String? = nil, key: String? = nil, clientCA: String? = nil) -> ApplianceConfig.FeedTLS {
        func f(_ path: String, _ k: String, line: Int) -> ApplianceConfig.ConfiguredPath {
            ApplianceConfig.ConfiguredPath(path: path, keyPath: "twin.feeds[0].tls.\(k)", location: SourceLocation(file: "t.yaml", line: line, column: 13))
        }
        return ApplianceConfig.FeedTLS(cert: f(cert ?? serverCert, "cert", line: 1), key: f(key ?? serverKey, "key", line: 2),
                                       clientCA: f(clientCA ?? caCert, "client_ca", line: 3))
    }
}

/// A TLS twin client: Python's `ssl` module in a child process. It connects, sends `lines`,
/// reports on stdout whether its side of the handshake finished, and stays connected until its
/// stdin is closed (`finish()`).
final class PythonTLSClient: @unchecked Sendable {
    let process = Process()
    private let input = Pipe()
    private let output = Pipe()

    static let script = """
        import socket, ssl, sys
        port, ca, cert, key, text = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(ca)
        ctx.check_hostname = False
        if cert != "-":
            ctx.load_cert_chain(cert, key)
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        try:
            t = ctx.wrap_socket(s)
            t.sendall(text.encode())
            print("sent", flush=True)
        except (ssl.SSLError, OSError) as e:
            print("failed", e, flush=True)
        sys.stdin.read()
        """

    init(port: Int, ca: String, cert: String?, key: String?, lines: String) throws {
        let python = pythonWithPymodbus() ?? "/usr/bin/python3"
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-c", Self.script, String(port), ca, cert ?? "-", key ?? "-", lines]
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    /// Closes the client's stdin and returns what it printed.
    func finish() -> String {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        return String(decoding: data, as: UTF8.self)
    }
}

@Suite("Twin feed TLS with client certificates", .serialized)
struct TwinFeedTLSTests {
    func withTLS(_ pki: TestPKI, _ body: (TwinSocketSource, Collector, Int) async throws -> Void) async throws {
        try await withTCP(options: .init(tls: try TwinFeedTLS(pki.files())), body)
    }

    @Test func aClientWithACertificateOfTheCAIsHeard() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        try await withTLS(pki) { source, c, port in
            let lines = Twin.line(seq: 1) + "\n" + Twin.signedLine(seq: 2) + "\n"
            let client = try PythonTLSClient(port: port, ca: pki.caCert, cert: pki.clientCert, key: pki.clientKey, lines: lines)
            #expect(await eventually(within: 30) { c.count == 2 })
            #expect(client.finish().hasPrefix("sent"))
            #expect(c.seqs("crane-01") == [1])
            #expect(c.seqs("crane-02") == [2])
            #expect(source.counters.clientsClosed[.tlsFailed] == nil)
        }
    }

    /// No certificate, a certificate of another CA, or plain TCP: the handshake fails and not one
    /// line is read; a good client afterwards is still heard.
    @Test func clientsWithoutAGoodCertificateAreRefusedAtTheHandshake() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        try await withTLS(pki) { source, c, port in
            let line = Twin.line(seq: 1) + "\n"
            let noCert = try PythonTLSClient(port: port, ca: pki.caCert, cert: nil, key: nil, lines: line)
            #expect(await eventually(within: 30) { source.counters.clientsClosed[.tlsFailed] == 1 })
            _ = noCert.finish()
            let otherCA = try PythonTLSClient(port: port, ca: pki.caCert, cert: pki.otherClientCert, key: pki.otherClientKey, lines: line)
            #expect(await eventually(within: 30) { source.counters.clientsClosed[.tlsFailed] == 2 })
            _ = otherCA.finish()
            let plain = try FeedClient(tcpPort: port)
            plain.send(line)
            #expect(await plain.waitForClose(timeout: 30))
            #expect(await eventually(within: 30) { source.counters.clientsClosed[.tlsFailed] == 3 })
            #expect(c.count == 0, "nothing from a client without a good certificate is read")
            #expect(source.counters.lines == 0)

            let good = try PythonTLSClient(port: port, ca: pki.caCert, cert: pki.clientCert, key: pki.clientKey, lines: Twin.line(seq: 2) + "\n")
            #expect(await eventually(within: 30) { c.count == 1 })
            _ = good.finish()
            #expect(c.seqs("crane-01") == [2])
        }
    }

    /// A missing or wrong TLS file stops the start, naming the config line and key.
    @Test func badTLSFilesAreStartupErrorsNamingTheConfigLine() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let missing = pki.dir + "/nope.pem"
        #expect(throws: TwinFeedConfigError.self) { try TwinFeedTLS(pki.files(cert: missing)) }
        do {
            _ = try TwinFeedTLS(pki.files(cert: missing))
        } catch {
            #expect(error.description == "t.yaml:1:13: twin.feeds[0].tls.cert: cannot open \(missing): no such file or directory (ENOENT)")
        }
        do {
            _ = try TwinFeedTLS(pki.files(clientCA: pki.clientKey))
            Issue.record("a key file is not a CA certificate")
        } catch {
            #expect(error.description.hasPrefix("t.yaml:3:13: twin.feeds[0].tls.client_ca: \(pki.clientKey) "))
        }
        // A private key others may read is refused before it is used.
        let exposed = pki.dir + "/exposed.key"
        try FileManager.default.copyItem(atPath: pki.dir + "/server.key", toPath: exposed)
        chmod(exposed, 0o640)
        do {
            _ = try TwinFeedTLS(pki.files(key: exposed))
            Issue.record("a group-readable TLS key must be refused")
        } catch {
            #expect(error.description == "t.yaml:2:13: twin.feeds[0].tls.key: \(exposed) can be read by group or others; a TLS private key must be mode 0600 or stricter (chmod 600, owned by the service user)")
        }
        do {
            _ = try TwinFeedTLS(pki.files(key: pki.clientKey))
            Issue.record("the client's key does not belong to the server certificate")
        } catch {
            #expect(error.description.hasPrefix("t.yaml:2:13: twin.feeds[0].tls.key: cannot set up TLS"))
        }
        // Through the config file and the service, as `run` does it.
        let yaml = "node: g\ntwin:\n  feeds:\n    - tcp: 127.0.0.1:0\n      tls: {cert: nope.pem, key: server.key, client_ca: ca.pem}\n"
        let config = try ApplianceConfig.parse(yaml: yaml, file: pki.dir + "/tibet-twin.yaml")
        do {
            _ = try TwinFeedService(feeds: config.twin.feeds, pipeline: Collector().feed, logger: Twin.quiet)
            Issue.record("a missing cert file must stop the start")
        } catch {
            #expect(error.description == "\(pki.dir)/tibet-twin.yaml:5:19: twin.feeds[0].tls.cert: cannot open \(missing): no such file or directory (ENOENT)")
        }
    }
}
