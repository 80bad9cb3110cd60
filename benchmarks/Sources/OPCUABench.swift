import Foundation
import OPCUA
import Platform

/// OPC UA client figures, each beside the asyncua 2.1.0 client measured in the same run
/// (benchmarks/opcua_baseline.py):
/// - Read round trip of one node against a local asyncua server, one request at a time, p50/p99
///   (both clients talk to the same server, which dominates: the difference is client cost).
/// - The same Read round trip over Basic256Sha256 SignAndEncrypt, beside None in the same run
///   against the same server (what signing and encrypting each message costs both sides).
/// - Decoding DataValues (a Double, a StatusCode, both timestamps: what a notification
///   carries), ns per value, best of several rounds.
struct OPCUABench: BenchSuite {
    let name = "OPCUABench"

    func run() async throws {
        let root = GuardBench().packageRoot()
        let python = ProcessInfo.processInfo.environment["TIBET_TWIN_PYTHON"] ?? root + "/.venv/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            print("  skipped: no python with asyncua at \(python) (run scripts/setup.sh)")
            return
        }
        try decodeFigures(python: python, root: root)
        try readFigures(python: python, root: root)
    }

    private func decodeFigures(python: String, root: String) throws {
        let count = 1000
        var w = UABinaryWriter()
        w.writeInt32(Int32(count))
        let now = UADateTime.now()
        for i in 0..<count {
            w.writeDataValue(DataValue(value: .double(Double(i) * 0.5), status: i % 10 == 0 ? StatusCode(rawValue: 0x4090_0000) : .good,
                                       sourceTimestamp: now, serverTimestamp: now))
        }
        let bytes = w.bytes
        var best = Int64.max
        var sink = 0
        for _ in 0..<50 {
            let t0 = monotonicNowNs()
            var r = UABinaryReader(bytes)
            let values = try r.readArray("bench") { (e: inout UABinaryReader) throws(UADecodingError) in try e.readDataValue() }
            sink &+= values.count
            best = min(best, monotonicNowNs() - t0)
        }
        let ours = Double(best) / Double(count)
        let file = NSTemporaryDirectory() + "opcua-bench-\(getpid()).bin"
        _ = FileManager.default.createFile(atPath: file, contents: Data(bytes))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let baseline = capture([python, root + "/benchmarks/opcua_baseline.py", "decode", file, "20"])?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        print(String(format: "  decode DataValue (Double, status, 2 timestamps)  %7.0f ns/value", ours)
              + "   asyncua client: \(baseline.map { "\($0) ns/value" } ?? "failed")   (\(sink / 50) values per round)")
    }

    private func readFigures(python: String, root: String) throws {
        // Certificates for the SignAndEncrypt figure: the server's (with asyncua's application
        // URI) and ours, each trusted by the other side.
        let pki = NSTemporaryDirectory() + "opcua-bench-pki-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: pki) }
        _ = try OPCUACertificateTool.makeCertificate(directory: pki + "/server", applicationUri: "urn:freeopcua:python:server", host: "localhost")
        _ = try OPCUACertificateTool.makeCertificate(directory: pki + "/client", applicationUri: "urn:tibet-twin:bench", host: "localhost")
        _ = try OPCUACertificateTool.trust(certificate: pki + "/server/cert.der", trustDirectory: pki + "/trusted")
        let server = Process()
        server.executableURL = URL(fileURLWithPath: python)
        server.arguments = [root + "/scripts/asyncua_server.py", "--cert", pki + "/server"]
        let input = Pipe(), output = Pipe()
        server.standardInput = input
        server.standardOutput = output
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer {
            try? input.fileHandleForWriting.close()
            server.waitUntilExit()
        }
        var line = Data()
        while !line.contains(0x0A) {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self)
        guard text.hasPrefix("READY "), let port = Int(text.dropFirst(6).prefix { $0.isNumber }) else {
            print("  read: asyncua server did not start")
            return
        }
        let endpoint = "opc.tcp://127.0.0.1:\(port)/"
        let n = 2000
        let node = NodeId.string("Crane01.PosX", namespace: 2)
        let samples = try readSamples(endpoint, node, n, OPCUAClientOptions())
        var secured = OPCUAClientOptions()
        secured.security = OPCUASecurity(policy: .basic256Sha256, mode: .signAndEncrypt, certificatePath: pki + "/client/cert.der",
                                         privateKeyPath: pki + "/client/key.pem", trustDirectory: pki + "/trusted")
        let securedSamples = try readSamples(endpoint, node, n, secured)
        let p50 = Double(samples[n / 2]) / 1000, p99 = Double(samples[n * 99 / 100]) / 1000
        let baseline = capture([python, root + "/benchmarks/opcua_baseline.py", "read", endpoint, "ns=2;s=Crane01.PosX", String(n)])?
            .split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        let base = baseline.map { $0.count == 2 ? String(format: "p50 %6.0f  p99 %6.0f µs", $0[0], $0[1]) : "failed" } ?? "failed"
        print(String(format: "  Read 1 node, asyncua server          p50 %6.0f  p99 %6.0f µs", p50, p99) + "   asyncua client: \(base)   (n=\(n) each)")
        let s50 = Double(securedSamples[n / 2]) / 1000, s99 = Double(securedSamples[n * 99 / 100]) / 1000
        print(String(format: "  Read 1 node, Basic256Sha256 SignAndEncrypt  p50 %6.0f  p99 %6.0f µs", s50, s99)
              + String(format: "   same client, security None: p50 %6.0f  p99 %6.0f µs   (n=%d each)", p50, p99, n))
    }

    /// `n` Read round trips of one node, sorted, ns.
    private func readSamples(_ endpoint: String, _ node: NodeId, _ n: Int, _ options: OPCUAClientOptions) throws -> [Int64] {
        try {
            let client = try OPCUAClient(endpoint: endpoint, options: options)
            try client.connect()
            defer { client.disconnect() }
            _ = try client.readValues([node])
            var s: [Int64] = []
            s.reserveCapacity(n)
            for _ in 0..<n {
                let t0 = monotonicNowNs()
                _ = try client.readValues([node])
                s.append(monotonicNowNs() - t0)
            }
            return s.sorted()
        }()
    }

    private func capture(_ args: [String]) -> String? { GuardBench().capture(args) }
}
