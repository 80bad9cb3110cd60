import Foundation
import Testing
@testable import Modbus

#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// The hardened read-only server over real sockets on 127.0.0.1: libmodbus as the reference
/// client, raw frames for what libmodbus would never send.
@Suite("Read-only Modbus server")
struct ReadOnlyServerTests {
    @Test func libmodbusReadsAllFourTables() async throws {
        try await withServer { server in
            let c = try LibmodbusClient(port: server.port)
            #expect(try c.readBits(0, 17) == sampleImage.coils)
            #expect(try c.readBits(0, 17, discrete: true) == sampleImage.discreteInputs)
            #expect(try c.readRegisters(0, 32) == sampleImage.holdingRegisters)
            #expect(try c.readRegisters(0, 32, input: true) == sampleImage.inputRegisters)
            #expect(try c.readRegisters(30, 2, input: true) == [130, 131])
            #expect(c.errnoOf { var b = [UInt8](repeating: 0, count: 2); return $0.readBits(16, 2, into: &b) } == ModbusError.exceptionErrno(2))
            var regs = [UInt16](repeating: 0, count: 2)
            #expect(c.errnoOf { $0.readRegisters(31, 2, into: &regs) } == ModbusError.exceptionErrno(2))
            let n = server.counters()
            #expect(n.readsAnswered == 5)
            // The first reply on a fresh connection finds an empty send queue, so at least it
            // went straight onto the socket; the rest may have, as the acknowledgements allowed.
            #expect(n.readsSentDirect >= 1 && n.readsSentDirect <= n.readsAnswered)
            #expect(n.exceptionIllegalAddress == 2)
            #expect(n.clients == 1)
        }
    }

    @Test func writesGetIllegalFunctionAndChangeNothing() async throws {
        let log = EventLog()
        try await withServer(events: log) { server in
            let c = try LibmodbusClient(port: server.port)
            let before = try c.readBits(0, 17)
            let bits: [UInt8] = [1, 1, 1]
            let regs: [UInt16] = [7, 7]
            var readBack = [UInt16](repeating: 0, count: 2)
            let results = [
                c.errnoOf { $0.writeBit(1, true) },
                c.errnoOf { $0.writeRegister(2, 9) },
                c.errnoOf { $0.writeBits(0, bits) },
                c.errnoOf { $0.writeRegisters(0, regs) },
                c.errnoOf { $0.maskWriteRegister(3, and: 0xFF00, or: 0x00FF) },
                c.errnoOf { $0.writeAndReadRegisters(write: 4, regs, read: 0, 2, into: &readBack) },
            ]
            #expect(results == [Int32](repeating: ModbusError.exceptionErrno(1), count: 6))
            #expect(try c.readBits(0, 17) == before)
            #expect(try c.readRegisters(0, 32) == sampleImage.holdingRegisters)
            #expect(server.image === sampleImage)
            #expect(server.counters().writesRejected == 6)
            let writes = log.all.compactMap { e -> [Int]? in
                guard case .writeRejected(let peer, let unit, let fc, let address, let count) = e else { return nil }
                #expect(peer.host == "127.0.0.1")
                #expect(unit == 1)
                return [Int(fc), Int(address ?? 9999), Int(count ?? 9999)]
            }
            #expect(writes == [[5, 1, 1], [6, 2, 1], [15, 0, 3], [16, 0, 2], [22, 3, 1], [23, 4, 2]])
        }
    }

    @Test func aPublishedImageIsSeenByTheNextRead() async throws {
        try await withServer { server in
            let c = try LibmodbusClient(port: server.port)
            #expect(try c.readBits(0, 1) == [1])
            let next = ModbusImage(coils: [0, 1], discreteInputs: [0, 1], holdingRegisters: [5], inputRegisters: [6])
            #expect(server.publish(next))
            #expect(try c.readBits(0, 2) == [0, 1])
            #expect(try c.readRegisters(0, 1) == [5])
            #expect(try c.readRegisters(0, 1, input: true) == [6])
            // Smaller image: the old addresses are gone.
            #expect(c.errnoOf { var b: [UInt8] = [0]; return $0.readBits(2, 1, into: &b) } == ModbusError.exceptionErrno(2))
            // Sealed: nothing published afterwards is served.
            server.seal(ModbusImage(coils: [0, 0], discreteInputs: [0, 0], holdingRegisters: [0], inputRegisters: [0]))
            #expect(!server.publish(next))
            #expect(try c.readBits(0, 2) == [0, 0])
            #expect(server.counters().publishes == 2)
        }
    }

    /// Every reply comes from one published image: while another thread publishes image after
    /// image (image k holds k in every register and k % 2 in every bit), no read of the
    /// widest span libmodbus allows ever returns values from two of them.
    @Test func aReplyNeverMixesTwoPublishedImages() async throws {
        @Sendable func image(_ k: Int) -> ModbusImage {
            let bit = UInt8(k % 2), reg = UInt16(k & 0xFFFF)
            return ModbusImage(coils: [UInt8](repeating: bit, count: 2000), discreteInputs: [UInt8](repeating: bit, count: 2000),
                               holdingRegisters: [UInt16](repeating: reg, count: 125),
                               inputRegisters: [UInt16](repeating: reg, count: 125))
        }
        try await withServer(image: image(0)) { server in
            let stop = StopFlag()
            let publisher = Thread {
                var k = 1
                while !stop.isSet {
                    server.publish(image(k))
                    k += 1
                    usleep(20)
                }
            }
            publisher.start()
            defer { stop.set() }
            let c = try LibmodbusClient(port: server.port)
            var mixed: [String] = []
            var seen = Set<UInt16>()
            for i in 0..<1200 {
                switch i % 4 {
                case 0:
                    let r = try c.readRegisters(0, 125)
                    seen.insert(r[0])
                    if Set(r).count != 1 { mixed.append("holding \(Set(r).sorted())") }
                case 1:
                    let r = try c.readRegisters(0, 125, input: true)
                    seen.insert(r[0])
                    if Set(r).count != 1 { mixed.append("input \(Set(r).sorted())") }
                case 2:
                    let b = try c.readBits(0, 2000)
                    if Set(b).count != 1 { mixed.append("coils") }
                default:
                    let b = try c.readBits(0, 2000, discrete: true)
                    if Set(b).count != 1 { mixed.append("discrete inputs") }
                }
            }
            stop.set()
            #expect(mixed == [])
            // The reads really ran while images changed (not one image the whole time).
            #expect(seen.count > 1)
        }
    }

    @Test func unitIdsAnsweredAndNot() async throws {
        try await withServer({ $0.unit = 7 }) { server in
            for unit: Int32 in [7, 0, 255] {
                let c = try LibmodbusClient(port: server.port, unit: unit)
                #expect(try c.readBits(0, 3) == [1, 0, 0], "unit \(unit)")
            }
            let wrong = try LibmodbusClient(port: server.port, unit: 1)
            #expect(wrong.errnoOf { var b: [UInt8] = [0]; return $0.readBits(0, 1, into: &b) } == ModbusError.exceptionErrno(11))
            #expect(server.counters().exceptionGatewayTarget == 1)
        }
    }

    /// Each malformed or hostile frame on its own connection: the right exception or a closed
    /// connection, while a second client reading all along sees no error.
    @Test func malformedFramesWhileAnotherClientReads() async throws {
        enum Outcome: Equatable { case exception(UInt8), closed }
        let cases: [(String, [UInt8], Outcome)] = [
            ("protocol id 1", mbap(pid: 1, readPDU(1, 0, 1)), .closed),
            ("protocol id 0x1234", mbap(pid: 0x1234, readPDU(3, 0, 1)), .closed),
            ("length 0", mbap(length: 0, readPDU(1, 0, 1)), .closed),
            ("length 1", mbap(length: 1, readPDU(1, 0, 1)), .closed),
            ("length 255", mbap(length: 255, readPDU(1, 0, 1) + [UInt8](repeating: 0, count: 249)), .closed),
            ("length longer than the read PDU", mbap(length: 8, readPDU(1, 0, 1) + [0, 0]), .closed),
            ("length shorter than the read PDU", mbap(length: 4, [3, 0, 0]), .closed),
            ("FC 0", mbap([0, 0, 0, 0, 1]), .exception(1)),
            ("FC 7", mbap([7]), .exception(1)),
            ("FC 8", mbap([8, 0, 0, 0xA5, 0x37]), .exception(1)),
            ("FC 0x11", mbap([0x11]), .exception(1)),
            ("FC 0x2B", mbap([0x2B, 0x0E, 1, 0]), .exception(1)),
            ("FC 0x42", mbap([0x42, 0, 0, 0, 1]), .exception(1)),
            ("FC 0x80", mbap([0x80, 0, 0, 0, 1]), .closed),
            ("FC 0x81", mbap([0x81, 0, 0, 0, 1]), .closed),
            ("FC 0xFF", mbap([0xFF]), .closed),
            ("quantity 0", mbap(readPDU(1, 0, 0)), .exception(3)),
            ("126 registers", mbap(readPDU(3, 0, 126)), .exception(3)),
            ("126 input registers", mbap(readPDU(4, 0, 126)), .exception(3)),
            ("2001 coils", mbap(readPDU(1, 0, 2001)), .exception(3)),
            ("2001 discrete inputs", mbap(readPDU(2, 0, 2001)), .exception(3)),
            ("address + quantity > 65535", mbap(readPDU(3, 65500, 100)), .exception(2)),
            ("past the layout", mbap(readPDU(1, 17, 1)), .exception(2)),
            ("byte count ≠ 2 × quantity", mbap([16, 0, 0, 0, 2, 3, 0, 1, 0]), .exception(1)),
            ("FC 23 byte count wrong", mbap([23, 0, 0, 0, 1, 0, 0, 0, 2, 3, 0, 1, 0]), .exception(1)),
            ("FC 5", mbap([5, 0, 0, 0xFF, 0]), .exception(1)),
            ("FC 6", mbap([6, 0, 0, 0, 1]), .exception(1)),
            ("FC 15", mbap([15, 0, 0, 0, 1, 1, 1]), .exception(1)),
            ("FC 16", mbap([16, 0, 0, 0, 1, 2, 0, 1]), .exception(1)),
            ("FC 22", mbap([22, 0, 0, 0, 0, 0xFF, 0xFF]), .exception(1)),
            ("FC 23", mbap([23, 0, 0, 0, 1, 0, 0, 0, 1, 2, 0, 1]), .exception(1)),
            ("foreign unit", mbap(unit: 9, readPDU(1, 0, 1)), .exception(0x0B)),
        ]
        try await withServer { server in
            let watcher = Watcher(port: server.port, coils: 17)
            defer { watcher.finish() }
            #expect(await eventually { watcher.reads > 0 })
            for (name, frame, expected) in cases {
                let raw = try RawClient(port: server.port)
                try raw.send(frame)
                switch expected {
                case .closed:
                    #expect(raw.waitClosed(), "\(name): connection should close")
                case .exception(let code):
                    let reply = raw.reply()
                    let fc = frame[7]
                    #expect(reply == .bytes([0x12, 0x34, 0, 0, 0, 3, frame[6], fc | 0x80, code]), "\(name)")
                    // The connection stays usable after an exception.
                    try raw.send(mbap(tid: 0x0102, readPDU(1, 0, 3)))
                    #expect(raw.reply() == .bytes([1, 2, 0, 0, 0, 4, 1, 1, 1, 0b001]), "\(name): next read")
                }
            }
            let readsBefore = watcher.reads
            #expect(await eventually { watcher.reads > readsBefore })
            watcher.finish()
            #expect(watcher.failures == [])
            let n = server.counters()
            #expect(n.closedMalformed == UInt64(cases.filter { $0.2 == .closed }.count))
            #expect(n.exceptionIllegalValue == 5)
            #expect(n.writesRejected == 8)
        }
    }

    @Test func truncatedHeaderAndSlowSenderCloseOnlyThatClient() async throws {
        try await withServer({ $0.byteTimeoutMs = 200 }) { server in
            let watcher = Watcher(port: server.port, coils: 17)
            defer { watcher.finish() }
            let truncated = try RawClient(port: server.port)
            try truncated.send([0x00, 0x01, 0x00])
            // A slow-loris: one byte of a valid frame every 60 ms (the frame would take 720 ms).
            let loris = try RawClient(port: server.port)
            var closed = false
            for b in mbap(readPDU(1, 0, 1)) {
                do { try loris.send([b]) } catch { closed = true; break }
                await pause(60)
            }
            #expect(closed || loris.waitClosed())
            #expect(truncated.waitClosed())
            #expect(await eventually { server.counters().closedByteTimeout == 2 })
            let readsBefore = watcher.reads
            #expect(await eventually { watcher.reads > readsBefore })
            watcher.finish()
            #expect(watcher.failures == [])
        }
    }

    @Test func pipelinedAndSplitFrames() async throws {
        // A byte timeout far above any pause below, however long a busy test run stretches it.
        try await withServer({ $0.byteTimeoutMs = 60_000 }) { server in
            let watcher = Watcher(port: server.port, coils: 17)
            defer { watcher.finish() }
            let raw = try RawClient(port: server.port)
            // Three requests in one segment: three replies, in order.
            try raw.send(mbap(tid: 1, readPDU(1, 0, 3)) + mbap(tid: 2, readPDU(4, 0, 2)) + mbap(tid: 3, [0x11]))
            #expect(raw.reply() == .bytes([0, 1, 0, 0, 0, 4, 1, 1, 1, 0b001]))
            #expect(raw.reply() == .bytes([0, 2, 0, 0, 0, 7, 1, 4, 4, 0, 100, 0, 101]))
            #expect(raw.reply() == .bytes([0, 3, 0, 0, 0, 3, 1, 0x91, 1]))
            // One request in three pieces, well inside the byte timeout.
            let f = mbap(tid: 4, readPDU(3, 1, 1))
            try raw.send(Array(f[0..<3]))
            await pause(20)
            try raw.send(Array(f[3..<8]))
            await pause(20)
            try raw.send(Array(f[8...]) + Array(mbap(tid: 5, readPDU(2, 3, 1)).prefix(4)))
            #expect(raw.reply() == .bytes([0, 4, 0, 0, 0, 5, 1, 3, 2, 0, 101]))
            try raw.send(Array(mbap(tid: 5, readPDU(2, 3, 1)).dropFirst(4)))
            #expect(raw.reply() == .bytes([0, 5, 0, 0, 0, 4, 1, 2, 1, 1]))
            // A valid read pipelined behind a malformed frame is never answered: the
            // connection closes at the malformed one.
            let bad = try RawClient(port: server.port)
            try bad.send(mbap(tid: 6, readPDU(1, 0, 1)) + mbap(pid: 7, tid: 7, readPDU(1, 0, 1)) + mbap(tid: 8, readPDU(1, 0, 1)))
            #expect(bad.reply() == .bytes([0, 6, 0, 0, 0, 4, 1, 1, 1, 1]))
            #expect(bad.reply() == .closed)
            #expect(await eventually { watcher.reads > 0 })
            watcher.finish()
            #expect(watcher.failures == [])
        }
    }

    /// No descriptor at or above the limit is ever served (1024 in production, where
    /// libmodbus's `select()` elsewhere in the process would abort on it): such a peer is
    /// closed at accept, counted and reported, and the server keeps running.
    @Test func descriptorsAtOrAboveTheLimitAreRefusedAtAccept() async throws {
        // A listener at or above the limit fails at init, with a typed error.
        #expect {
            try ModbusServer(configuration: .init(host: "127.0.0.1", port: 0, descriptorLimit: 3), image: .empty)
        } throws: { ($0 as? ModbusServerError)?.kind == .descriptorLimit }
        // A limit a few descriptors above the lowest free one: the listener, the epoll and the
        // reply pair fit below it, and the clients opened here soon reach it. Other tests open
        // descriptors at the same time, so a listener that lands above it just means try again.
        var made: ModbusServer?
        let log = EventLog()
        for _ in 0..<20 where made == nil {
            let lowest = open("/dev/null", O_RDONLY)
            close(lowest)
            made = try? ModbusServer(
                configuration: .init(host: "127.0.0.1", port: 0, maxClients: 1000, descriptorLimit: lowest + 8),
                image: sampleImage, events: log.sink)
        }
        let server = try #require(made, "no listener below the limit in 20 tries")
        try server.start()
        defer { server.stop(); server.join() }
        var clients: [RawClient] = []
        for _ in 0..<40 { clients.append(try RawClient(port: server.port)) }
        #expect(await eventually { server.counters().accepted + server.counters().refusedDescriptorLimit == 40 })
        #expect(server.counters().refusedDescriptorLimit >= 1)
        #expect(log.all.contains { if case .refused(_, .descriptorLimit) = $0 { return true }; return false })
        // Every client was either served or closed, none left hanging.
        var served = 0, closed = 0
        for c in clients {
            // A refused peer may already see its send fail (reset by the close).
            guard (try? c.send(mbap(tid: 9, readPDU(1, 0, 1)))) != nil else { closed += 1; continue }
            switch c.reply() {
            case .bytes(let r): #expect(r == [0, 9, 0, 0, 0, 4, 1, 1, 1, 1]); served += 1
            case .closed: closed += 1
            case .timeout: Issue.record("a client neither served nor closed")
            }
        }
        #expect(UInt64(served) == server.counters().accepted)
        #expect(UInt64(closed) == server.counters().refusedDescriptorLimit)
    }

    @Test func aClientThatReadsSlowlyGetsEveryReplyInOrder() async throws {
        try await withServer(image: bigImage, { $0.writeStallTimeoutMs = 60_000 }) { server in
            // A small receive window: the server's sends go partial and wait for EPOLLOUT.
            let raw = try RawClient(port: server.port, receiveBuffer: 4096)
            let count = 6000  // 6000 × 259-byte replies ≈ 1.5 MB
            let sender = Thread {
                var batch: [UInt8] = []
                for i in 0..<count {
                    batch += mbap(tid: UInt16(i & 0xFFFF), readPDU(3, 0, 125))
                    if batch.count > 4000 { try? raw.send(batch); batch = [] }
                }
                try? raw.send(batch)
            }
            sender.start()
            await pause(200)  // let replies pile up on the server before reading any
            var ok = 0
            for i in 0..<count {
                guard case .bytes(let r) = raw.reply(timeoutMs: 10_000) else { break }
                if r.count == 9 + 250 && r[0] == UInt8(i >> 8 & 0xFF) && r[1] == UInt8(i & 0xFF)
                    && r[9] == 0 && r[10] == 100 && r[257] == 0 && r[258] == 224 {
                    ok += 1
                }
            }
            #expect(ok == count)
            // Most replies waited in the output buffer behind unread ones; any that went
            // straight onto the socket still arrived in order (checked above).
            let n = server.counters()
            #expect(n.readsAnswered == UInt64(count))
            #expect(n.readsSentDirect < n.readsAnswered)
        }
    }

    @Test func aClientThatNeverReadsIsClosedAndDoesNotStallOthers() async throws {
        try await withServer(image: bigImage, { $0.writeStallTimeoutMs = 300 }) { server in
            let watcher = Watcher(port: server.port, coils: 1)
            defer { watcher.finish() }
            let raw = try RawClient(port: server.port, receiveBuffer: 4096)
            let batch = (0..<1000).flatMap { mbap(tid: UInt16($0), readPDU(3, 0, 125)) }
            // Sends until the server gives up on this client (then send fails).
            let sender = Thread {
                for _ in 0..<2000 { if (try? raw.send(batch)) == nil { break } }
            }
            sender.start()
            #expect(await eventually(within: 20) { server.counters().closedWriteStall == 1 })
            let readsBefore = watcher.reads
            #expect(await eventually { watcher.reads > readsBefore })
            watcher.finish()
            #expect(watcher.failures == [])
        }
    }

    @Test func idleClientsAreClosed() async throws {
        try await withServer({ $0.idleTimeoutMs = 150 }) { server in
            let quiet = try RawClient(port: server.port)
            #expect(quiet.waitClosed())
            #expect(server.counters().closedIdle == 1)
        }
    }

    @Test func allowListIsCheckedAtAccept() async throws {
        let log = EventLog()
        try await withServer(events: log, { $0.allow = { $0.bytes != [127, 0, 0, 1] } }) { server in
            let raw = try RawClient(port: server.port)
            #expect(raw.waitClosed())
            #expect(server.counters().refusedNotAllowed == 1)
            #expect(server.counters().accepted == 0)
            #expect(log.all.contains { if case .refused(let p, .notAllowed) = $0 { return p.host == "127.0.0.1" }; return false })
        }
    }

    @Test func maxClientsRefusesTheNextUntilOneLeaves() async throws {
        try await withServer({ $0.maxClients = 2 }) { server in
            var clients = [try LibmodbusClient(port: server.port), try LibmodbusClient(port: server.port)]
            for c in clients { #expect(try c.readBits(0, 1) == [1]) }
            let third = try RawClient(port: server.port)
            #expect(third.waitClosed())
            #expect(server.counters().refusedTooManyClients == 1)
            clients.removeLast()
            #expect(await eventually { server.counters().clients == 1 })
            let fourth = try LibmodbusClient(port: server.port)
            #expect(try fourth.readBits(0, 1) == [1])
            #expect(try clients[0].readBits(0, 1) == [1])
        }
    }

    @Test func stopAfterAGracePeriodKeepsServingUntilThen() async throws {
        // On 127.0.0.2, so no other test's port-0 listener on 127.0.0.1 can take the port
        // after this one closes and make "connection refused" untestable.
        var config = ModbusServer.Configuration(host: "127.0.0.2", port: 0)
        config.idleTimeoutMs = 0
        let server = try ModbusServer(configuration: config, image: sampleImage)
        try server.start()
        defer { server.stop(); server.join() }
        let c = try LibmodbusClient(port: server.port, host: "127.0.0.2")
        server.stop(afterMilliseconds: 400)
        #expect(try c.readBits(0, 1) == [1])
        let raw = try RawClient(port: server.port, host: 0x7F00_0002)
        #expect(raw.waitClosed())
        server.join()
        #expect(throws: ClientFailure.self) { try RawClient(port: server.port, host: 0x7F00_0002) }
    }

    @Test func aTakenPortOrBadAddressFailsAtInit() async throws {
        try await withServer { server in
            #expect {
                try ModbusServer(configuration: .init(host: "127.0.0.1", port: server.port), image: .empty)
            } throws: { ($0 as? ModbusServerError)?.kind == .listen }
        }
        #expect {
            try ModbusServer(configuration: .init(host: "not an address", port: 0), image: .empty)
        } throws: { ($0 as? ModbusServerError)?.kind == .badAddress }
    }

    @Test func listensOnAHostName() async throws {
        let server = try ModbusServer(configuration: .init(host: "localhost", port: 0), image: sampleImage)
        try server.start()
        defer { server.stop(); server.join() }
        let c = try LibmodbusClient(port: server.port)
        #expect(try c.readBits(0, 1) == [1])
    }

    @Test func servesIPv6Loopback() async throws {
        let server: ModbusServer
        do {
            server = try ModbusServer(configuration: .init(host: "::1", port: 0), image: sampleImage)
        } catch {
            // No IPv6 on this host: nothing to test.
            return
        }
        try server.start()
        defer { server.stop(); server.join() }
        guard let c = try? LibmodbusBaselineClient(host: "::1", port: server.port) else { return }
        #expect(c.connect() == 0)
        var bits = [UInt8](repeating: 9, count: 3)
        #expect(c.readBits(0, 3, into: &bits) == 3)
        #expect(bits == [1, 0, 0])
        c.close()
    }
}
