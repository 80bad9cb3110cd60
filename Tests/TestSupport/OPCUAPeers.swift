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
    /// (`["operator": "secret"]`: then only user name logins are offered) or on a given port.
    public static func asyncua(users: [String: String] = [:], port: Int = 0) throws -> OPCUAPeer {
        var args = ["--port", String(port)]
        if !users.isEmpty { args += ["--users", users.map { "\($0):\($1)" }.joined(separator: ",")] }
        return try OPCUAPeer(script: "asyncua_server.py", arguments: args)
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
    public func stop() {
        guard process.isRunning else { return }
        try? input.fileHandleForWriting.close()
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { stop() }
}
