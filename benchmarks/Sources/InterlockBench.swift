import Appliance
import CLinux
import Commissioning
import Foundation
import Modbus
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// The interlock server beside the stock libmodbus `select()` loop (upstream's
/// `bandwidth-server-many-up.c`, built here at run time with `cc`), in the same run:
/// FC1 reads/s with 1, 4 and 16 libmodbus clients, and the latency a well-behaved client sees
/// while a slow-loris client and a flood of malformed frames run.
struct InterlockBench: BenchSuite {
    let name = "InterlockBench"

    /// Set in the environment of the child that serves the interlock for the parent's clients.
    static let serveVariable = "TIBET_TWIN_BENCH_SERVE_INTERLOCK"

    func run() async throws {
        if ProcessInfo.processInfo.environment[Self.serveVariable] != nil {
            try Self.serve()
        }
        // Both servers run as their own process, the clients in this one: the same contest
        // for the 2 cores either way.
        let stockBinary = try StockLoop.build()
        let ours = try ServerProcess.launch("/proc/self/exe", ["InterlockBench"], environment: [Self.serveVariable: "1"],
                                            thread: "interlock")
        defer { ours.kill() }
        let stock = try ServerProcess.launch(stockBinary, ["0"])
        defer { stock.kill() }

        // Ours and the stock loop take turns (3 rounds of 1 s each), so load from anything else
        // on the machine hits both alike; the median round is shown. CPU µs per read is the
        // server thread's on-CPU time (/proc/<pid>/task/<tid>/schedstat) divided by the reads:
        // how much work one answer costs, whatever else runs.
        let rounds = 3
        print("FC1 read of 8 coils, libmodbus clients on 127.0.0.1; median of \(rounds) alternating 1 s rounds")
        print("clients  interlock reads/s  CPU µs/read   stock loop reads/s  CPU µs/read   ratio")
        for clients in [1, 4, 16] {
            var o: [(Double, Double)] = [], k: [(Double, Double)] = []
            for _ in 0..<rounds {
                o.append(Load.measured(statPath: ours.statPath) { Load.throughput(port: ours.port, clients: clients, seconds: 1) })
                k.append(Load.measured(statPath: stock.statPath) { Load.throughput(port: stock.port, clients: clients, seconds: 1) })
            }
            let om = o.sorted { $0.0 < $1.0 }[rounds / 2], km = k.sorted { $0.0 < $1.0 }[rounds / 2]
            print(String(format: "%7d  %17.0f  %11.1f   %18.0f  %11.1f   %5.2f", clients, om.0, om.1, km.0, km.1,
                         om.0 / max(km.0, 1)))
        }

        print("")
        print("well-behaved client (FC1 every 1 ms, 4 s) while 1 slow-loris client and 1 malformed-frame flood run")
        print("server               reads   failed   p50 ms    p99 ms    max ms")
        print(Load.latencyUnderAttack(port: ours.port, seconds: 4).line("interlock"))
        print(Load.latencyUnderAttack(port: stock.port, seconds: 4).line("stock select loop"))
    }

    /// The child: an interlock server with 4 devices, one of them permitting, until killed.
    static func serve() throws -> Never {
        let layout = try InterlockLayout(maps: (0..<4).map { k in
            DeviceMap(device: "dev-\(k)", profile: .port, plc: PLCEndpoint(host: "127.0.0.1"),
                      limits: Limits(maxDriftMs: 200, rearmMs: 100),
                      status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [0: "operational"]),
                      registers: [], intents: [IntentSpec(name: "a", coil: UInt16(2 * k)), IntentSpec(name: "b", coil: UInt16(2 * k + 1))])
        })
        // Its log goes to stderr, which the parent sends to /dev/null.
        let interlock = try InterlockServer(config: InterlockConfig(host: "127.0.0.1", port: 0, maxClients: 64),
                                            layout: layout)
        try interlock.start()
        interlock.publish(PermitTable(layout: layout, heartbeat: 1, healthy: true, devices: [
            "dev-0": DeviceDiagnostics(reason: .ok, permits: ["a", "b"]),
        ]))
        print("PORT \(interlock.port)")
        fflush(nil)
        while true { sleep(3600) }
    }
}

/// A server child process that printed `PORT n` on its first line.
struct ServerProcess {
    let process: Process
    let port: Int
    /// schedstat of the thread that serves (or of the process's main thread).
    let statPath: String?

    static func launch(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                       thread: String? = nil) throws -> ServerProcess {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable == "/proc/self/exe"
            ? (try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) : executable)
        p.arguments = arguments
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        // Lines until "PORT n" (the bench binary prints its suite header first).
        var line = ""
        while true {
            let d = out.fileHandleForReading.readData(ofLength: 1)
            if d.isEmpty { break }
            line += String(decoding: d, as: UTF8.self)
            if line.hasSuffix("\n"), line.split(separator: "\n").last?.hasPrefix("PORT ") == true { break }
        }
        let portLine = line.split(separator: "\n").last { $0.hasPrefix("PORT ") } ?? ""
        guard let port = Int(portLine.dropFirst(5)) else {
            Glibc.kill(p.processIdentifier, SIGKILL)
            throw BenchFailure("\(executable) did not report its port: \(line)")
        }
        var stat: String? = "/proc/\(p.processIdentifier)/schedstat"
        if let thread {
            stat = Load.threadStatPath(pid: p.processIdentifier, named: thread)
        }
        return ServerProcess(process: p, port: port, statPath: stat)
    }

    /// SIGKILL: a child spawned from a dispatch thread inherits its blocked signal mask, so
    /// SIGTERM would stay pending forever.
    func kill() {
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

/// The stock libmodbus 3.1.6 server loop, as upstream ships it, with a port argument.
enum StockLoop {
    static let source = #"""
    /* Upstream tests/bandwidth-server-many-up.c (libmodbus 3.1.6), quiet, with a port argument
       and the bound port printed, so the benchmark can run it beside the interlock server. */
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <unistd.h>
    #include <errno.h>
    #include <sys/select.h>
    #include <sys/socket.h>
    #include <netinet/in.h>
    #include <modbus.h>

    int main(int argc, char **argv) {
        uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
        modbus_t *ctx = modbus_new_tcp("127.0.0.1", argc > 1 ? atoi(argv[1]) : 0);
        modbus_mapping_t *mb_mapping = modbus_mapping_new(8, 8, 48, 48);
        int server_socket = modbus_tcp_listen(ctx, 64);
        if (server_socket == -1) { fprintf(stderr, "listen failed\n"); return 1; }
        struct sockaddr_in sin; socklen_t len = sizeof(sin);
        getsockname(server_socket, (struct sockaddr *)&sin, &len);
        printf("PORT %d\n", ntohs(sin.sin_port));
        fflush(stdout);
        fd_set refset, rdset;
        FD_ZERO(&refset);
        FD_SET(server_socket, &refset);
        int fdmax = server_socket;
        for (;;) {
            rdset = refset;
            if (select(fdmax + 1, &rdset, NULL, NULL, NULL) == -1) { if (errno == EINTR) continue; return 1; }
            for (int s = 0; s <= fdmax; s++) {
                if (!FD_ISSET(s, &rdset)) continue;
                if (s == server_socket) {
                    int newfd = accept(server_socket, NULL, NULL);
                    if (newfd != -1) { FD_SET(newfd, &refset); if (newfd > fdmax) fdmax = newfd; }
                } else {
                    modbus_set_socket(ctx, s);
                    int rc = modbus_receive(ctx, query);
                    if (rc > 0) {
                        modbus_reply(ctx, query, rc, mb_mapping);
                    } else if (rc == -1) {
                        close(s);
                        FD_CLR(s, &refset);
                        if (s == fdmax) fdmax--;
                    }
                }
            }
        }
    }
    """#

    /// Compiles the stock loop with `cc $(pkg-config --cflags --libs libmodbus)`.
    static func build() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-twin-bench-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let src = dir.appendingPathComponent("stock-loop.c")
        let bin = dir.appendingPathComponent("stock-loop")
        try source.write(to: src, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "cc -O2 -o '\(bin.path)' '\(src.path)' $(pkg-config --cflags --libs libmodbus)"]
        try p.run()
        p.waitUntilExit()
        if p.terminationStatus != 0 { throw BenchFailure("cc failed building the stock libmodbus loop") }
        return bin.path
    }
}

struct BenchFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Client load, on dedicated threads (blocking libmodbus and socket calls).
enum Load {
    static func monotonicNs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    /// `/proc/<pid>/task/<tid>/schedstat` of the thread of `pid` with that name.
    static func threadStatPath(pid: Int32, named name: String) -> String? {
        for _ in 0..<100 {
            if let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") {
                for tid in tasks {
                    let comm = (try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/comm", encoding: .utf8)) ?? ""
                    if comm.trimmingCharacters(in: .whitespacesAndNewlines) == name { return "/proc/\(pid)/task/\(tid)/schedstat" }
                }
            }
            usleep(10_000)
        }
        return nil
    }

    /// Nanoseconds on CPU from a schedstat file (its first field).
    static func cpuNs(_ path: String?) -> Int64 {
        guard let path, let text = try? String(contentsOfFile: path, encoding: .utf8) else { return 0 }
        return Int64(text.split(separator: " ").first ?? "") ?? 0
    }

    /// Runs a throughput measurement and returns (reads/s, server CPU µs per read).
    static func measured(statPath: String?, _ body: () -> Double) -> (Double, Double) {
        let before = cpuNs(statPath)
        let perSecond = body()
        let cpu = Double(cpuNs(statPath) - before) / 1000
        return (perSecond, perSecond > 0 ? cpu / perSecond : .nan)
    }

    /// Runs `body` on `count` threads and waits for all of them.
    static func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
        let done = DispatchSemaphore(value: 0)
        for i in 0..<count {
            let t = Thread {
                body(i)
                done.signal()
            }
            t.stackSize = 1 << 20
            t.start()
        }
        for _ in 0..<count { done.wait() }
    }

    /// FC1 reads of 8 coils per second, summed over `clients` libmodbus clients.
    static func throughput(port: Int, clients: Int, seconds: Double) -> Double {
        let total = Mutex(0)
        let start = Mutex<Int64>(0)
        let ready = DispatchSemaphore(value: 0)
        let go = DispatchSemaphore(value: 0)
        let finished = DispatchSemaphore(value: 0)
        for _ in 0..<clients {
            Thread {
                let ctx = try! LibmodbusBaselineClient(host: "127.0.0.1", port: port, responseTimeoutMs: 2000)
                let connected = ctx.connect() == 0
                ready.signal()
                go.wait()
                var n = 0
                var bits = [UInt8](repeating: 0, count: 8)
                let end = start.withLock { $0 } + Int64(seconds * 1e9)
                if connected {
                    while monotonicNs() < end {
                        if ctx.readBits(0, 8, into: &bits) == 8 { n += 1 }
                    }
                }
                ctx.close()
                total.withLock { $0 += n }
                finished.signal()
            }.start()
        }
        for _ in 0..<clients { ready.wait() }
        start.withLock { $0 = monotonicNs() }
        for _ in 0..<clients { go.signal() }
        for _ in 0..<clients { finished.wait() }
        return Double(total.withLock { $0 }) / seconds
    }

    struct AttackResult {
        var samplesMs: [Double]
        var failed: Int

        func percentile(_ p: Double) -> Double {
            guard !samplesMs.isEmpty else { return .nan }
            let s = samplesMs.sorted()
            return s[min(s.count - 1, Int((p * Double(s.count)).rounded(.up)) - 1)]
        }

        func line(_ name: String) -> String {
            name.padding(toLength: 18, withPad: " ", startingAt: 0)
                + String(format: " %7d  %7d  %7.3f  %8.3f  %8.3f", samplesMs.count, failed,
                         percentile(0.5), percentile(0.99), samplesMs.max() ?? .nan)
        }
    }

    /// A raw TCP connection for the attackers.
    static func connectRaw(_ port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = UInt16(port).bigEndian
        sin.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 { close(fd); return -1 }
        return fd
    }

    /// The good client's latency while a slow-loris client (one byte of a valid frame every
    /// 100 ms) and a malformed-frame flood (unknown function, quantity 0, protocol id ≠ 0,
    /// length 0, FC 0x11) hammer the same server.
    static func latencyUnderAttack(port: Int, seconds: Double) -> AttackResult {
        let stop = Mutex(false)
        let attackers = DispatchSemaphore(value: 0)
        // Slow loris.
        Thread {
            let frame: [UInt8] = [0, 1, 0, 0, 0, 6, 1, 1, 0, 0, 0, 8]
            while !stop.withLock({ $0 }) {
                let fd = connectRaw(port)
                if fd < 0 { usleep(10_000); continue }
                for b in frame {
                    if stop.withLock({ $0 }) { break }
                    var byte = b
                    if send(fd, &byte, 1, Int32(MSG_NOSIGNAL)) != 1 { break }
                    usleep(100_000)
                }
                close(fd)
            }
            attackers.signal()
        }.start()
        // Malformed flood.
        Thread {
            let frames: [[UInt8]] = [
                [0, 2, 0, 0, 0, 6, 1, 0x42, 0, 0, 0, 1],     // unknown function (stock: sleeps 0.5 s)
                [0, 3, 0, 0, 0, 6, 1, 1, 0, 0, 0, 0],        // quantity 0 (stock: sleeps 0.5 s)
                [0, 4, 0x12, 0x34, 0, 6, 1, 1, 0, 0, 0, 1],  // protocol id 0x1234
                [0, 5, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1],        // length 0
                [0, 6, 0, 0, 0, 2, 1, 0x11],                 // report server id
            ]
            var i = 0
            var fd: Int32 = -1
            var buf = [UInt8](repeating: 0, count: 512)
            while !stop.withLock({ $0 }) {
                if fd < 0 { fd = connectRaw(port); if fd < 0 { usleep(10_000); continue } }
                let f = frames[i % frames.count]
                i += 1
                if f.withUnsafeBytes({ send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }) != f.count {
                    close(fd); fd = -1; continue
                }
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
                if n == 0 || (n < 0 && errno != EAGAIN) { close(fd); fd = -1 }
            }
            if fd >= 0 { close(fd) }
            attackers.signal()
        }.start()
        usleep(300_000)  // let the attack begin
        // The well-behaved client.
        let result = Mutex(AttackResult(samplesMs: [], failed: 0))
        onThreads(1) { _ in
            let ctx = try! LibmodbusBaselineClient(host: "127.0.0.1", port: port, responseTimeoutMs: 3000)
            guard ctx.connect() == 0 else { result.withLock { $0.failed += 1 }; return }
            var bits = [UInt8](repeating: 0, count: 8)
            let end = monotonicNs() + Int64(seconds * 1e9)
            var samples: [Double] = []
            var failed = 0
            while monotonicNs() < end {
                let t0 = monotonicNs()
                if ctx.readBits(0, 8, into: &bits) == 8 {
                    samples.append(Double(monotonicNs() - t0) / 1e6)
                } else {
                    failed += 1
                    ctx.close()
                    _ = ctx.connect()
                }
                usleep(1000)
            }
            ctx.close()
            result.withLock { $0 = AttackResult(samplesMs: samples, failed: failed) }
        }
        stop.withLock { $0 = true }
        attackers.wait()
        attackers.wait()
        return result.withLock { $0 }
    }
}
