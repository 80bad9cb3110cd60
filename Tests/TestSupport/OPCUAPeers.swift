import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// An outside OPC UA peer as a child process: `scripts/asyncua_server.py` (a real asyncua 2.1.0
/// server) or `scripts/opcua_hostile_server.py MODE`. Both print `READY PORT` once listening
/// and exit when their stdin closes; stopped by `stop()` or deinit.
public final class OPCUAPeer: @unchecked Sendable {
    public let process = Process()
    public let port: Int
    private let input = Pipe()
    private let lines: LineReader

    /// `opc.tcp://127.0.0.1:PORT/`
    public var endpoint: String { "opc.tcp://127.0.0.1:\(port)/" }

    /// The asyncua server (see the script for its address space), optionally with users
    /// (`["operator": "secret"]`: then only user name logins are offered), on a given port, or
    /// with a certificate directory (`cert.der`, `key.pem`: then Basic256Sha256 is offered too).
    /// `secureModes`: which Basic256Sha256 modes it offers beside None ("sign",
    /// "signandencrypt"); `trustedClients`: a directory of the client certificates it accepts
    /// (nil: any); `encryptedPasswordsOnly`: refuse a user name login whose password is not
    /// encrypted with the server's key.
    public static func asyncua(users: [String: String] = [:], port: Int = 0, certificateDirectory: String? = nil,
                               secureModes: [String] = ["signandencrypt"], trustedClients: String? = nil,
                               encryptedPasswordsOnly: Bool = false) throws -> OPCUAPeer {
        var args = ["--port", String(port)]
        if !users.isEmpty { args += ["--users", users.map { "\($0):\($1)" }.joined(separator: ",")] }
        if let certificateDirectory { args += ["--cert", certificateDirectory, "--secure", secureModes.joined(separator: ",")] }
        if let trustedClients { args += ["--trust-clients", trustedClients] }
        if encryptedPasswordsOnly { args.append("--encrypted-passwords-only") }
        return try OPCUAPeer(script: "asyncua_server.py", arguments: args)
    }

    /// A proxy to `127.0.0.1:upstreamPort` that flips a bit in a server message on command
    /// (`flip MSG`, `flip OPN`): scripts/opcua_tamper_proxy.py.
    public static func tamperProxy(upstreamPort: Int) throws -> OPCUAPeer {
        try OPCUAPeer(script: "opcua_tamper_proxy.py", arguments: [String(upstreamPort)])
    }

    /// The hostile server in `mode` (see the script for the modes).
    public static func hostile(_ mode: String) throws -> OPCUAPeer {
        try OPCUAPeer(script: "opcua_hostile_server.py", arguments: [mode])
    }

    private init(script: String, arguments: [String]) throws {
        guard let python = pythonWithPymodbus() else { throw SimpleError("python with asyncua not found: run scripts/setup.sh") }
        let out = Pipe()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [packageRoot.appendingPathComponent("scripts/\(script)").path] + arguments
        process.standardInput = input
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        lines = LineReader(out.fileHandleForReading)
        guard let first = lines.next(timeoutMs: 60_000), first.hasPrefix("READY "), let p = Int(first.dropFirst(6)) else {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw SimpleError("\(script) did not start")
        }
        port = p
    }

    /// Sends one command and waits for its `ok`.
    public func command(_ line: String) throws {
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
        guard let answer = lines.next(timeoutMs: 20_000), answer == "ok" else { throw SimpleError("OPC UA peer: no ok for \(line)") }
    }

    /// Closes its stdin (it exits at end of input); SIGKILL if it has not gone within 5 s.
    public func stop() { stopChild(process, closing: input) }

    deinit { stop() }
}

/// Makes a self-signed RSA certificate for a test server with openssl: `cert.der` and `key.pem`
/// in a new temporary directory, returned.
public func makeServerCertificate() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-twin-cert-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for args in [["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(dir)/key.pem", "-out", "\(dir)/cert.pem", "-days", "2",
                  "-subj", "/CN=tibet-twin test server", "-addext", "subjectAltName=URI:urn:freeopcua:python:server,DNS:localhost"],
                 ["x509", "-in", "\(dir)/cert.pem", "-outform", "der", "-out", "\(dir)/cert.der"]] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw SimpleError("openssl \(args[0]) failed") }
    }
    return dir
}
