import Foundation
import Synchronization
import Testing
@testable import Appliance
import TibetTwin
import TestSupport

@Suite("Twin socket sources", .serialized)
struct TwinSocketSourceTests {
    @Test func twoClientsInterleave() async throws {
        try await withTCP { source, c, port in
            let a = try FeedClient(tcpPort: port)
            let b = try FeedClient(tcpPort: port)
            for i in 1...50 {
                #expect(a.send(Twin.line("crane-01", seq: i) + "\n"))
                #expect(b.send(Twin.signedLine("crane-02", seq: i) + "\n"))
            }
            #expect(await eventually { c.count == 100 })
            #expect(c.seqs("crane-01") == Array(1...50))
            #expect(c.seqs("crane-02") == Array(1...50))
            #expect(c.all.filter { $0.device == "crane-02" }.allSatisfy { $0.signature == .valid })
            let k = source.counters
            #expect(k.accepted == 100)
            #expect(k.clientsConnected == 2)
            #expect(k.clientsAccepted == 2)
        }
    }

    /// Ten devices for the news-first tests.
    static let cells = (0..<10).map { "cell-\($0)" }
    static func cellParser() throws -> TwinLineParser { try TwinLineParser(maps: cells.map { Twin.map($0) }, keys: [:]) }

    /// A TCP source for `cells` and a client whose first line of each cell (`seq` 1) was taken.
    func withCellsKnown(_ body: (TwinSocketSource, Collector, FeedClient) async throws -> Void) async throws {
        try await withTCP(parser: try Self.cellParser()) { source, c, port in
            let a = try FeedClient(tcpPort: port)
            for n in Self.cells { a.send(Twin.line(n, seq: 1) + "\n") }
            #expect(await eventually { c.count == Self.cells.count })
            try await body(source, c, a)
        }
    }

    /// News first: in one read, a line that changes its device's state reaches the sink before
    /// the repeats of other devices ahead of it, and each device's lines keep their order.
    @Test func newsOvertakesTheRepeatsOfOtherDevicesInARead() async throws {
        let names = Self.cells
        try await withCellsKnown { source, c, a in
            // One write (about 1.4 KB: one read): a repeat of every device, then news of cell-5.
            a.send(names.map { Twin.line($0, seq: 2) + "\n" }.joined() + Twin.line("cell-5", seq: 3, load: 9999) + "\n")
            #expect(await eventually { c.count == 2 * names.count + 1 })
            let second = c.all.dropFirst(names.count).map { "\($0.device)/\($0.seq ?? 0)" }
            #expect(second == ["cell-5/2", "cell-5/3"] + names.filter { $0 != "cell-5" }.map { "\($0)/2" })
            for n in names { #expect(c.seqs(n) == (n == "cell-5" ? [1, 2, 3] : [1, 2])) }
            #expect(source.counters.accepted == UInt64(2 * names.count + 1) && source.counters.droppedTotal == 0)
            // A line whose device is not told by its start releases every held line first.
            let odd = #"{"ts":"\#(RFC3339.format(wallNs: SystemTimeSource().now().wallNs))","device":"cell-9","seq":5,"status":"fault","values":{"position_x":12.5,"load_kg":2500}}"#
            // (Repeats after it are held again.)
            a.send(names.prefix(3).map { Twin.line($0, seq: 4) + "\n" }.joined() + odd + "\n"
                   + names[3..<5].map { Twin.line($0, seq: 4) + "\n" }.joined() + Twin.line("cell-6", seq: 4, load: 7777) + "\n")
            #expect(await eventually { c.count == 2 * names.count + 8 })
            #expect(c.all.suffix(7).map { "\($0.device)/\($0.seq ?? 0)" }
                    == ["cell-0/4", "cell-1/4", "cell-2/4", "cell-9/5", "cell-6/4", "cell-3/4", "cell-4/4"])
            #expect(source.counters.droppedTotal == 0)
        }
    }

    /// Repeats held over several reads are taken in order, a few at a time between reads,
    /// behind news that came after them.
    @Test func heldRepeatsSpanReadsAndAreAllTaken() async throws {
        let names = Self.cells
        try await withCellsKnown { source, c, a in
            // About 110 KB in one write (several reads): 70 repeats per device, then news of cell-3.
            var text = ""
            for i in 0..<70 { for n in names { text += Twin.line(n, seq: 2 + i) + "\n" } }
            a.send(text + Twin.line("cell-3", seq: 100, load: 9999) + "\n")
            let total = names.count * 71 + 1
            #expect(await eventually { c.count == total })
            for n in names { #expect(c.seqs(n) == Array(1...71) + (n == "cell-3" ? [100] : [])) }
            let order = c.all.map { "\($0.device)/\($0.seq ?? 0)" }
            let news = try #require(order.firstIndex(of: "cell-3/100"))
            #expect(news < order.count - 1, "the news overtook repeats sent before it")
            #expect(source.counters.accepted == UInt64(total) && source.counters.droppedTotal == 0)
        }
    }

    /// None of the held repeats is lost when the client goes away right after sending them.
    @Test func repeatsSentRightBeforeACloseAreAllTaken() async throws {
        try await withTCP(parser: try Self.cellParser()) { source, c, port in
            do {
                let a = try FeedClient(tcpPort: port)
                var text = ""
                for i in 0..<60 { for n in Self.cells { text += Twin.line(n, seq: 1 + i) + "\n" } }
                a.send(text)
            }  // closed here
            #expect(await eventually { c.count == 600 })
            for n in Self.cells { #expect(c.seqs(n) == Array(1...60)) }
            #expect(source.counters.accepted == 600)
        }
    }

    @Test func linesSplitAcrossWritesAndCRLF() async throws {
        try await withTCP { _, c, port in
            let a = try FeedClient(tcpPort: port)
            let line = Twin.line(seq: 1) + "\r\n" + Twin.line(seq: 2) + "\n"
            for byte in Array(line.utf8) {
                a.send([byte])
            }
            #expect(await eventually { c.count == 2 })
            #expect(c.seqs("crane-01") == [1, 2])
        }
    }

    @Test func garbageClientIsCutOffWhileAGoodOneContinues() async throws {
        try await withTCP { source, c, port in
            let good = try FeedClient(tcpPort: port)
            let bad = try FeedClient(tcpPort: port)
            good.send(Twin.line(seq: 1) + "\n")
            var garbage = ""
            for i in 0..<100 { garbage += "\u{1B}[31m junk \(i) {\"device\":\n" }
            bad.send(garbage)
            #expect(await bad.waitForClose(timeout: 10), "a garbage-only client is disconnected")
            good.send(Twin.line(seq: 2) + "\n")
            #expect(await eventually { c.seqs("crane-01") == [1, 2] })
            let k = source.counters
            #expect(k.clientsCutOff == 1)
            #expect(k.dropped[.notJSON] == 100)
            #expect(await eventually { source.counters.clientsConnected == 1 })
        }
    }

    @Test func oneGoodLineResetsTheGarbageCount() async throws {
        try await withTCP(options: .init(garbageLimit: 10)) { source, c, port in
            let client = try FeedClient(tcpPort: port)
            var text = ""
            for i in 1...5 {
                for _ in 0..<9 { text += "junk\n" }
                text += Twin.line(seq: i) + "\n"
            }
            client.send(text)
            #expect(await eventually { c.count == 5 })
            #expect(source.counters.clientsCutOff == 0)
            client.send(String(repeating: "junk\n", count: 10))
            #expect(await client.waitForClose(timeout: 10))
        }
    }

    @Test func overlongLineCutsTheClientOff() async throws {
        try await withTCP { source, c, port in
            let client = try FeedClient(tcpPort: port)
            client.send(Twin.line(seq: 1) + "\n")
            client.send([UInt8](repeating: UInt8(ascii: "x"), count: TwinLineParser.maxLineBytes + 100))
            #expect(await client.waitForClose(timeout: 10))
            #expect(await eventually { source.counters.dropped[.tooLong] == 1 })
            #expect(c.seqs("crane-01") == [1])
        }
    }

    @Test func clientReconnects() async throws {
        try await withTCP { source, c, port in
            do {
                let first = try FeedClient(tcpPort: port)
                first.send(Twin.line(seq: 1) + "\n" + Twin.line(seq: 2) + "\n" + #"{"device":"crane-01","ts"#)
                #expect(await eventually { c.count == 2 })
            }
            // Gone mid-line: that fragment is an incomplete line; the listener carries on.
            #expect(await eventually { source.counters.clientsConnected == 0 })
            #expect(source.counters.dropped[.incompleteLine] == 1)
            let second = try FeedClient(tcpPort: port)
            second.send(Twin.line(seq: 3) + "\n")
            #expect(await eventually { c.count == 3 })
            // A reconnecting twin that replays its old lines is not believed.
            second.send(Twin.line(seq: 2) + "\n")
            #expect(await eventually { source.counters.dropped[.replay] == 1 })
            #expect(c.seqs("crane-01") == [1, 2, 3])
            #expect(source.counters.clientsAccepted == 2)
        }
    }

    @Test func stopDisconnectsEveryClient() async throws {
        let c = Collector()
        let source = TwinSocketSource(endpoint: .tcp(host: "127.0.0.1", port: 0), pipeline: c.feed, logger: Twin.quiet)
        try await source.start()
        let port = try #require(source.localPort)
        let a = try FeedClient(tcpPort: port)
        let b = try FeedClient(tcpPort: port)
        #expect(await eventually { source.counters.clientsConnected == 2 })
        await #expect(throws: TwinSourceError.self) { try await source.start() }
        await source.stop()
        #expect(await a.waitForClose(timeout: 10))
        #expect(await b.waitForClose(timeout: 10))
        #expect(await eventually { source.counters.clientsConnected == 0 })
        #expect(throws: FeedClient.ClientError.self) { try FeedClient(tcpPort: port) }
        await source.stop()
    }

    @Test func tooManyClientsAreRefused() async throws {
        try await withTCP(options: .init(maxClients: 2)) { source, c, port in
            let a = try FeedClient(tcpPort: port)
            let b = try FeedClient(tcpPort: port)
            a.send(Twin.line("crane-01", seq: 1) + "\n")
            b.send(Twin.line("hoist-77", seq: 1) + "\n")
            #expect(await eventually { c.count == 2 })
            let third = try FeedClient(tcpPort: port)
            #expect(await third.waitForClose(timeout: 10))
            #expect(source.counters.clientsRefused == 1)
        }
    }

    @Test func identityFailuresReachTheSinkFlagged() async throws {
        try await withTCP { source, c, port in
            let client = try FeedClient(tcpPort: port)
            client.send(Twin.signedLine(seq: 1) + "\n")
            client.send(Twin.line("crane-02", seq: 2) + "\n")
            client.send(Twin.signedLine(seq: 1).replacingOccurrences(of: "2500", with: "9999") + "\n")
            client.send(Twin.signedLine(seq: 3) + "\n")
            #expect(await eventually { c.count == 4 })
            #expect(c.all.map(\.signature) == [.valid, .missing, .invalid, .valid])
            #expect(source.counters.identityFailures == 2)
            #expect(source.counters.accepted == 2)
        }
    }

    @Test func unixSocketMode0660AndRemovedOnStop() async throws {
        let dir = Twin.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/twin.sock"
        let c = Collector()
        let source = TwinSocketSource(endpoint: .unix(path: path), pipeline: c.feed, logger: Twin.quiet)
        try await source.start()
        var st = stat()
        #expect(stat(path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o660)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        do {
            let a = try FeedClient(unixPath: path)
            let b = try FeedClient(unixPath: path)
            for i in 1...20 {
                a.send(Twin.line("crane-01", seq: i) + "\n")
                b.send(Twin.line("hoist-77", seq: i) + "\n")
            }
            #expect(await eventually { c.count == 40 })
            #expect(c.seqs("crane-01") == Array(1...20))
            #expect(c.seqs("hoist-77") == Array(1...20))
            let bad = try FeedClient(unixPath: path)
            bad.send(String(repeating: "{]\n", count: 100))
            #expect(await bad.waitForClose(timeout: 10))
            a.send(Twin.line("crane-01", seq: 21) + "\n")
            #expect(await eventually { c.seqs("crane-01").last == 21 })
        }
        await source.stop()
        #expect(access(path, F_OK) != 0, "socket file removed on stop")
        // A stale socket file from a crashed run does not block the next start.
        let again = TwinSocketSource(endpoint: .unix(path: path), pipeline: c.feed, logger: Twin.quiet)
        try await again.start()
        await again.stop()
    }

    @Test func bindFailureIsATypedError() async throws {
        try await withTCP { _, _, port in
            let clash = TwinSocketSource(endpoint: .tcp(host: "127.0.0.1", port: port), pipeline: Collector().feed, logger: Twin.quiet)
            await #expect(throws: TwinSourceError.self) { try await clash.start() }
        }
        let nowhere = TwinSocketSource(endpoint: .unix(path: "/nonexistent-dir/x.sock"), pipeline: Collector().feed, logger: Twin.quiet)
        await #expect(throws: TwinSourceError.self) { try await nowhere.start() }
    }

    /// 100k random and mutated lines through a socket, good lines in between: no crash, every
    /// line counted once, every good line applied in order.
    @Test func fuzz() async throws {
        var rng = SplitMix(seed: 0x7457_494E)
        let templates = [
            Twin.line("hoist-77", seq: 5),
            #"{"device":"hoist-77","ts":"2026-11-26T14:32:00.500+01:00","status":"fault","values":{"load_kg":-1.5e3},"predicted":true,"model_version":"x"}"#,
            #"{"device":"hoist-77","ts":"2026-11-26T14:32:00Z","status":"operational","values":{"position_x":"\u00e9\n"}}"#,
        ]
        let alphabet = Array(#"{}[]:,"\0123456789.eE+-truefalsnl xyz"#.utf8) + [0x00, 0x7F, 0xC3, 0xA9, 0xFF, 0xE2, 0x82, 0xAC, 0x0D]
        func mutate(_ s: String) -> [UInt8] {
            var b = Array(s.utf8)
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                guard !b.isEmpty else { break }
                let i = Int(rng.next() % UInt64(b.count))
                switch rng.next() % 5 {
                case 0: b[i] = UInt8(truncatingIfNeeded: rng.next())
                case 1: b.remove(at: i)
                case 2: b.insert(alphabet[Int(rng.next() % UInt64(alphabet.count))], at: i)
                case 3: b.removeSubrange(i..<min(b.count, i + Int(rng.next() % 20)))
                default:
                    let j = Int(rng.next() % UInt64(b.count))
                    b.insert(contentsOf: b[min(i, j)..<max(i, j)].prefix(40), at: i)
                }
            }
            return b.map { $0 == 0x0A ? 0x20 : $0 }
        }
        func random() -> [UInt8] {
            (0..<Int(rng.next() % 120)).map { _ in
                rng.next() % 2 == 0 ? alphabet[Int(rng.next() % UInt64(alphabet.count))] : UInt8(truncatingIfNeeded: rng.next())
            }.map { $0 == 0x0A ? 0x20 : $0 }
        }
        var payload: [UInt8] = []
        var good = 0
        let total = 100_000
        for n in 0..<total {
            if n % 20 == 19 {
                good += 1
                payload += Array(Twin.line("crane-01", seq: good).utf8)
            } else if n % 3 == 0 {
                payload += random()
            } else {
                payload += mutate(templates[Int(rng.next() % UInt64(templates.count))])
            }
            payload.append(0x0A)
        }
        try await withTCP { source, c, port in
            let client = try FeedClient(tcpPort: port)
            // Blocking sends on their own thread, not on the test's cooperative one.
            let sent = Mutex<Bool?>(nil)
            let bytes = payload
            Thread { [client] in sent.withLock { $0 = client.send(bytes) } }.start()
            #expect(await eventually(within: 60) { sent.withLock { $0 } != nil })
            #expect(sent.withLock { $0 } == true, "the client must not be cut off")
            let counted = await eventually(within: 60) {
                let k = source.counters
                return k.lines + k.blankLines == UInt64(total)
            }
            #expect(counted)
            let k = source.counters
            #expect(k.lines == k.accepted + k.droppedTotal)
            #expect(k.accepted >= UInt64(good))
            #expect(k.clientsCutOff == 0)
            #expect(c.seqs("crane-01") == Array(1...good).map(UInt64.init))
            #expect(k.droppedTotal > 50_000, "most fuzz lines are bad: \(k.dropped)")
        }
    }
}

