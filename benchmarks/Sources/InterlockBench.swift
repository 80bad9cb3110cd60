import Appliance
import CModbus
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

    func run() async throws {
        let stockBinary = try StockLoop.build()
        let layout = try InterlockLayout(maps: (0..<4).map { k in
            DeviceMap(device: "dev-\(k)", profile: .port, plc: PLCEndpoint(host: "127.0.0.1"),
                      limits: Limits(maxDriftMs: 200, rearmMs: 100),
                      status: StatusSpec(register: RegisterSpec(name: "status", address: 0), values: [0: "operational"]),
                      registers: [], intents: [IntentSpec(name: "a", coil: UInt16(2 * k)), IntentSpec(name: "b", coil: UInt16(2 * k + 1))])
        })
        let interlock = try InterlockServer(config: InterlockConfig(host: "127.0.0.1", port: 0, maxClients: 64),
                                            layout: layout)
        try interlock.start()
        defer { interlock.stopImmediately() }
        interlock.publish(PermitTable(layout: layout, heartbeat: 1, healthy: true, devices: [
            "dev-0": DeviceDiagnostics(reason: .ok, permits: ["a", "b"]),
        ]))

        print("FC1 read of 8 coils, libmodbus clients on 127.0.0.1, 2 s per figure (higher is better)")
        print("clients  interlock reads/s   stock select loop reads/s   ratio")
        for clients in [1, 4, 16] {
            let ours = Load.throughput(port: interlock.port, clients: clients, seconds: 2)
            let stock = try StockLoop.with(stockBinary) { Load.throughput(port: $0, clients: clients, seconds: 2) }
            print(String(format: "%7d  %17.0f   %25.0f   %5.2f", clients, ours, stock, ours / max(stock, 1)))
        }

        print("")
        print("well-behaved client (FC1 every 1 ms, 4 s) while 1 slow-loris client and 1 malformed-frame flood run")
        print("server               reads   failed   p50 ms    p99 ms    max ms")
        let oursAttack = Load.latencyUnderAttack(port: interlock.port, seconds: 4)
        print(oursAttack.line("interlock"))
        let stockAttack = try StockLoop.with(stockBinary) { Load.latencyUnderAttack(port: $0, seconds: 4) }
        print(stockAttack.line("stock select loop"))
        let n = interlock.counters()
        print("interlock counters: requests \(n.requests), exceptions \(n.exceptions), closed malformed \(n.closedMalformed), "
              + "closed byte timeout \(n.closedByteTimeout)")
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

    /// Runs the stock loop on a free port for the duration of `body`, then kills it.
    static func with<R>(_ binary: String, _ body: (Int) throws -> R) throws -> R {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["0"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer {
            // SIGKILL: a child spawned from a dispatch thread inherits its blocked signal mask,
            // so SIGTERM would stay pending forever.
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        let line = String(decoding: out.fileHandleForReading.availableDataLine(), as: UTF8.self)
        guard line.hasPrefix("PORT "), let port = Int(line.dropFirst(5).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw BenchFailure("stock loop did not report its port: \(line)")
        }
        return try body(port)
    }
}

struct BenchFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

extension FileHandle {
    /// Reads up to and including the first newline.
    func availableDataLine() -> Data {
        var d = Data()
        while true {
            let b = readData(ofLength: 1)
            if b.isEmpty { return d }
            d.append(b)
            if b.first == 10 { return d }
        }
    }
}

/// Client load, on dedicated threads (blocking libmodbus and socket calls).
enum Load {
    static func monotonicNs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
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
                let ctx = modbus_new_tcp("127.0.0.1", Int32(port))!
                modbus_set_response_timeout(ctx, 2, 0)
                let connected = modbus_connect(ctx) == 0
                ready.signal()
                go.wait()
                var n = 0
                var bits = [UInt8](repeating: 0, count: 8)
                let end = start.withLock { $0 } + Int64(seconds * 1e9)
                if connected {
                    while monotonicNs() < end {
                        if modbus_read_bits(ctx, 0, 8, &bits) == 8 { n += 1 }
                    }
                }
                modbus_close(ctx)
                modbus_free(ctx)
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
            let ctx = modbus_new_tcp("127.0.0.1", Int32(port))!
            modbus_set_response_timeout(ctx, 3, 0)
            guard modbus_connect(ctx) == 0 else { result.withLock { $0.failed += 1 }; modbus_free(ctx); return }
            var bits = [UInt8](repeating: 0, count: 8)
            let end = monotonicNs() + Int64(seconds * 1e9)
            var samples: [Double] = []
            var failed = 0
            while monotonicNs() < end {
                let t0 = monotonicNs()
                if modbus_read_bits(ctx, 0, 8, &bits) == 8 {
                    samples.append(Double(monotonicNs() - t0) / 1e6)
                } else {
                    failed += 1
                    modbus_close(ctx)
                    _ = modbus_connect(ctx)
                }
                usleep(1000)
            }
            modbus_close(ctx)
            modbus_free(ctx)
            result.withLock { $0 = AttackResult(samplesMs: samples, failed: failed) }
        }
        stop.withLock { $0 = true }
        attackers.wait()
        attackers.wait()
        return result.withLock { $0 }
    }
}
