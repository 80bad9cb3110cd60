import Foundation
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// The crane model served over OPC UA for the demo (`demo --twin opcua`) and the benchmark:
/// `scripts/asyncua_server.py` (asyncua 2.1.0) on a free loopback port, driven through its stdin.
/// Python is `$TIBET_TWIN_PYTHON`, else the repository's `.venv/bin/python` (scripts/setup.sh
/// makes it); the script is found above the working directory or the executable.
package final class DemoOPCUAServer: @unchecked Sendable {
    package let port: Int
    private let process = Process()
    private let input = Pipe()
    private let output: FileHandle
    private let lock = NSLock()
    private var buffer: [UInt8] = []

    struct NotStarted: Error, CustomStringConvertible {
        var description: String
    }

    /// `opc.tcp://127.0.0.1:PORT/`
    package var endpoint: String { "opc.tcp://127.0.0.1:\(port)/" }

    /// `arguments`: more of the script's options (`--devices N`, `--items N`).
    package init(arguments: [String] = []) throws {
        guard let root = Self.repositoryRoot() else {
            throw NotStarted(description: "--twin opcua needs scripts/asyncua_server.py: run it from the tibet-twin repository")
        }
        let env = ProcessInfo.processInfo.environment["TIBET_TWIN_PYTHON"]
        let python = env ?? root + "/.venv/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw NotStarted(description: "--twin opcua needs python with asyncua 2.1.0 at \(python) (scripts/setup.sh, or set TIBET_TWIN_PYTHON)")
        }
        let out = Pipe()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [root + "/scripts/asyncua_server.py", "--port", "0"] + arguments
        process.standardInput = input
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        output = out.fileHandleForReading
        guard let first = Self.readLine(output, &buffer, timeoutMs: 60_000), first.hasPrefix("READY "), let p = Int(first.dropFirst(6)) else {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw NotStarted(description: "the asyncua server did not start (\(python) scripts/asyncua_server.py)")
        }
        port = p
    }

    /// Sends one command and waits for its answer; true on `ok`.
    @discardableResult
    package func command(_ line: String) -> Bool { request(line) == "ok" }

    /// Sends one command; its answer line (`ok`, `ok MONOTONIC_NS`, `error …`), or nil.
    package func request(_ line: String) -> String? {
        lock.lock()
        defer { lock.unlock() }
        guard process.isRunning else { return nil }
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
        return Self.readLine(output, &buffer, timeoutMs: 10_000)
    }

    package func stop() {
        try? input.fileHandleForWriting.close()
        let deadline = monotonicNowNs() + 5_000_000_000
        while process.isRunning, monotonicNowNs() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// The first directory above the working directory or the executable with the script.
    static func repositoryRoot() -> String? {
        let starts = [FileManager.default.currentDirectoryPath, (CommandLine.arguments.first.map { URL(fileURLWithPath: $0).deletingLastPathComponent().path }) ?? ""]
        for start in starts where !start.isEmpty {
            var dir = URL(fileURLWithPath: start).standardizedFileURL
            for _ in 0..<8 {
                if FileManager.default.fileExists(atPath: dir.appendingPathComponent("scripts/asyncua_server.py").path) { return dir.path }
                dir = dir.deletingLastPathComponent()
            }
        }
        return nil
    }

    /// A line from `fd` within `timeoutMs` (poll), or nil.
    package static func readLine(_ handle: FileHandle, _ buffer: inout [UInt8], timeoutMs: Int) -> String? {
        let fd = handle.fileDescriptor
        let deadline = monotonicNowNs() + Int64(timeoutMs) * 1_000_000
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                return line
            }
            let left = Int32(max(0, (deadline - monotonicNowNs()) / 1_000_000))
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, left) > 0 else { return nil }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return nil }
            buffer.append(contentsOf: chunk[..<n])
        }
    }
}
