import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// A child process a test starts: its stdout and stderr are collected line by line, the test
/// can wait for a line, send signals and wait for its exit. `deinit` kills it (SIGKILL) if it
/// still runs, so a failing test never leaves a child behind.
final class Child: @unchecked Sendable {
    let process = Process()
    let name: String
    private let lines = Mutex<(out: [String], err: [String], partialOut: String, partialErr: String)>(([], [], "", ""))
    private let input = Pipe()

    /// Starts `executable` with `args`. `environment` entries are added to the test's environment.
    init(_ executable: String, _ args: [String], environment: [String: String] = [:], name: String? = nil,
         currentDirectory: String? = nil) throws {
        self.name = name ?? URL(fileURLWithPath: executable).lastPathComponent
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = args
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "NOTIFY_SOCKET")
        for (k, v) in environment { env[k] = v }
        process.environment = env
        if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        for (pipe, isErr) in [(out, false), (err, true)] {
            pipe.fileHandleForReading.readabilityHandler = { [weak self] h in
                let data = h.availableData
                if data.isEmpty { h.readabilityHandler = nil }  // EOF: stop watching (no spin)
                self?.take(data, err: isErr)
            }
        }
        try process.run()
    }

    private let eof = Mutex<(out: Bool, err: Bool)>((false, false))

    private func take(_ data: Data, err: Bool) {
        guard !data.isEmpty else {
            eof.withLock { if err { $0.err = true } else { $0.out = true } }
            return
        }
        let text = String(decoding: data, as: UTF8.self)
        lines.withLock { l in
            var partial = (err ? l.partialErr : l.partialOut) + text
            var complete: [String] = []
            while let nl = partial.firstIndex(of: "\n") {
                complete.append(String(partial[..<nl]))
                partial = String(partial[partial.index(after: nl)...])
            }
            if err {
                l.err += complete
                l.partialErr = partial
            } else {
                l.out += complete
                l.partialOut = partial
            }
        }
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }
    var stdoutLines: [String] { lines.withLock { $0.out } }
    var stderrLines: [String] { lines.withLock { $0.err } }
    /// Everything printed so far, for failure messages.
    var transcript: String {
        lines.withLock { "[\(name) stdout]\n" + $0.out.joined(separator: "\n") + "\n[\(name) stderr]\n" + $0.err.joined(separator: "\n") }
    }

    /// Writes a line to the child's stdin.
    func send(_ line: String) {
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
    }

    /// Waits until a stdout (or stderr, with `stderr: true`) line satisfies `match`, up to
    /// `timeout` seconds; returns the line, or nil on timeout or exit.
    @discardableResult
    func waitForLine(timeout: Double = 20, stderr: Bool = false, _ match: (String) -> Bool) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let all = lines.withLock { stderr ? $0.err : $0.out }
            if let hit = all.first(where: match) { return hit }
            if !process.isRunning {
                // Let the last output drain.
                usleep(100_000)
                return lines.withLock { stderr ? $0.err : $0.out }.first(where: match)
            }
            usleep(10_000)
        }
        return nil
    }

    func signal(_ sig: Int32) {
        if process.isRunning { kill(process.processIdentifier, sig) }
    }

    /// Waits for the exit up to `timeout` seconds; returns the exit status, or nil if it still runs.
    func waitForExit(timeout: Double = 20) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { return nil }
        process.waitUntilExit()
        // The last output may still be in the pipes: wait (briefly) for both to reach EOF.
        let drain = Date().addingTimeInterval(2)
        while Date() < drain && !eof.withLock({ $0.out && $0.err }) { usleep(2_000) }
        return process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
    }

    /// Stops the child: SIGTERM, then SIGKILL after `grace` seconds.
    func stop(grace: Double = 10) {
        guard process.isRunning else { return }
        signal(SIGTERM)
        if waitForExit(timeout: grace) == nil {
            signal(SIGKILL)
            _ = waitForExit(timeout: 5)
        }
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// A fresh temporary directory, removed by `cleanup()`.
struct TempDir {
    let url: URL
    var path: String { url.path }

    init(_ prefix: String = "tibet-e2e") throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func file(_ name: String) -> String { url.appendingPathComponent(name).path }

    func write(_ name: String, _ text: String) throws {
        let u = url.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: u.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: u, atomically: true, encoding: .utf8)
    }

    func cleanup() { try? FileManager.default.removeItem(at: url) }
}

/// An outside interlock client: a pymodbus 3.8.6 process that reads coils `0..<count` every
/// 5 ms and prints `coils <bits>` whenever they change (and `error <what>` when a read fails),
/// so a test can wait for the coil value an independent Modbus stack sees.
final class CoilWatcher {
    let child: Child

    static let script = """
        import sys, time
        from pymodbus.client import ModbusTcpClient
        host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        c = ModbusTcpClient(host, port=port, timeout=1, retries=0, reconnect_delay=0.05)
        last = None
        while True:
            try:
                if not c.connected:
                    c.connect()
                rr = c.read_coils(0, count=count, slave=1)
                if rr.isError():
                    line = "error " + str(rr)
                else:
                    line = "coils " + "".join("1" if b else "0" for b in rr.bits[:count])
            except Exception as e:
                line = "error " + type(e).__name__
                try:
                    c.close()
                except Exception:
                    pass
            if line != last:
                print(line, flush=True)
                last = line
            time.sleep(0.005)
        """

    init(port: Int, count: Int, dir: TempDir) throws {
        guard let python = pythonWithPymodbus() else { throw HarnessError("pymodbus venv missing: run scripts/setup.sh") }
        try dir.write("coilwatch.py", Self.script)
        child = try Child(python, [dir.file("coilwatch.py"), "127.0.0.1", String(port), String(count)], name: "coilwatch")
    }

    /// The coils as last printed (`"10"`: coil 0 = 1, coil 1 = 0), or nil before the first read.
    var current: String? {
        child.stdoutLines.last(where: { $0.hasPrefix("coils ") }).map { String($0.dropFirst(6)) }
    }

    /// Waits until coil `index` is `value` and stays the latest line; returns the seconds it took.
    @discardableResult
    func waitFor(coil index: Int, _ value: Bool, timeout: Double = 10) -> Double? {
        let start = Date()
        while Date().timeIntervalSince(start) < timeout {
            if let bits = current, let last = child.stdoutLines.last, last.hasPrefix("coils "),
               bits.count > index, (bits[bits.index(bits.startIndex, offsetBy: index)] == "1") == value {
                return Date().timeIntervalSince(start)
            }
            usleep(2_000)
        }
        return nil
    }

    deinit { child.stop(grace: 1) }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

extension Child {
    /// Sends a line to a Python peer that answers each with `ok <line>`, and waits (suspending,
    /// a liveness bound) for that answer.
    func command(_ line: String, within seconds: Double = 10) async {
        let before = stdoutLines.filter { $0.hasPrefix("ok ") }.count
        send(line)
        _ = await eventually(within: seconds) { stdoutLines.filter { $0.hasPrefix("ok ") }.count > before }
    }
}
