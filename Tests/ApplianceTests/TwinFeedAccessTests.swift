import Foundation
import Testing
@testable import Appliance
import TibetTwin
import TestSupport

/// Issue 17 item 2: nobody but the twin may hold the twin feed's connection slots, because a
/// twin that cannot connect holds every permit at 0. Every test attacks the real listener over
/// real sockets on loopback.
@Suite("Twin feed access: allow list, limits, timeouts", .serialized)
struct TwinFeedAccessTests {
    /// The attack of the issue: 36 idle connections from one address. Only 4 get a slot (the rest
    /// are closed at accept), the twin on another address connects at once and its lines are
    /// accepted, the 4 idle ones are closed by the idle timeout while the twin, which keeps
    /// sending, stays; then a twin on the attacker's own address gets a slot too.
    @Test func idleConnectionsCannotLockTheTwinOut() async throws {
        let options = TwinSocketSource.Options(allow: [CIDRBlock("127.0.0.0/8")!], idleTimeoutMs: 1500)
        try await withTCP(options: options) { source, c, port in
            var idle: [FeedClient] = []
            for _ in 0..<36 { idle.append(try FeedClient(tcpPort: port, from: "127.0.0.1")) }
            #expect(await eventually { source.counters.clientsAccepted == 4 && source.counters.clientsRefused == 32 })
            #expect(source.counters.clientsClosed[.tooManyFromAddress] == 32)

            let twin = try FeedClient(tcpPort: port, from: "127.0.0.2")
            #expect(twin.send(Twin.line(seq: 1) + "\n"))
            #expect(await eventually { c.seqs("crane-01") == [1] }, "the twin's line is accepted while the idle connections are held")

            // The twin keeps sending (as a live twin does, every max_age_ms / 2); the idle ones
            // are closed. Each line is awaited before the next, so the test never races the timer.
            var seq = 1
            var allClosed = false
            var heard = true
            for _ in 0..<200 where !allClosed && heard {
                seq += 1
                #expect(twin.send(Twin.line(seq: seq) + "\n"))
                #expect(await eventually { c.seqs("crane-01").last == UInt64(seq) })
                heard = c.seqs("crane-01").last == UInt64(seq)  // stop early if the twin was cut off
                await pause(100)
                allClosed = source.counters.clientsClosed[.idleTimeout] == 4
            }
            #expect(allClosed, "the 4 idle connections are closed by the idle timeout")
            for client in idle { #expect(await client.waitForClose(timeout: 10)) }
            #expect(source.counters.clientsConnected == 1, "only the twin is left")

            // The slots of 127.0.0.1 are free again: a twin there connects and is heard.
            let local = try FeedClient(tcpPort: port, from: "127.0.0.1")
            #expect(local.send(Twin.line("hoist-77", seq: 1) + "\n"))
            #expect(await eventually { c.seqs("hoist-77") == [1] })
            #expect(twin.send(Twin.line(seq: seq + 1) + "\n"))
            #expect(await eventually { c.seqs("crane-01").last == UInt64(seq + 1) })
            #expect(source.counters.clientsClosed[.idleTimeout] == 4, "the twins were never closed as idle")
        }
    }

    /// The total limit still holds when every connection comes from a different address.
    @Test func totalLimitStillHolds() async throws {
        let options = TwinSocketSource.Options(maxClients: 3, allow: [CIDRBlock("127.0.0.0/8")!], maxClientsPerAddress: 2)
        try await withTCP(options: options) { source, c, port in
            let a = try FeedClient(tcpPort: port, from: "127.0.0.2")
            let b = try FeedClient(tcpPort: port, from: "127.0.0.3")
            let d = try FeedClient(tcpPort: port, from: "127.0.0.4")
            #expect(await eventually { source.counters.clientsConnected == 3 })
            let e = try FeedClient(tcpPort: port, from: "127.0.0.5")
            #expect(await e.waitForClose(timeout: 10))
            #expect(source.counters.clientsClosed[.tooManyClients] == 1)
            for (i, client) in [a, b, d].enumerated() { #expect(client.send(Twin.line(seq: i + 1) + "\n")) }
            #expect(await eventually { c.seqs("crane-01") == [1, 2, 3] })
        }
    }

    /// A peer outside the feed's allow list is closed at accept and nothing it sends is read;
    /// a peer inside it is heard.
    @Test func allowListRefusesOtherPeersAtAccept() async throws {
        let options = TwinSocketSource.Options(allow: [CIDRBlock("127.0.0.2/32")!])
        try await withTCP(options: options) { source, c, port in
            let outsider = try FeedClient(tcpPort: port, from: "127.0.0.1")
            outsider.send(Twin.line(seq: 1) + "\n")
            #expect(await outsider.waitForClose(timeout: 10))
            #expect(source.counters.clientsClosed[.notAllowed] == 1)
            #expect(source.counters.clientsRefused == 1)

            let twin = try FeedClient(tcpPort: port, from: "127.0.0.2")
            #expect(twin.send(Twin.line(seq: 2) + "\n"))
            #expect(await eventually { c.count == 1 })
            #expect(c.seqs("crane-01") == [2], "the outsider's line was never read")
            #expect(source.counters.lines == 1)
            #expect(source.counters.clientsConnected == 1)
        }
    }

    /// Blank lines (and bad lines) are not a twin's lines: a client that sends only those is
    /// closed by the idle timeout, although it is never silent.
    @Test func keepAlivesWithoutAcceptedLinesDoNotHoldASlot() async throws {
        let options = TwinSocketSource.Options(idleTimeoutMs: 1000)
        try await withTCP(options: options) { source, c, port in
            let chatty = try FeedClient(tcpPort: port)
            var closed = false
            for i in 0..<300 where !closed {
                closed = !chatty.send(i % 2 == 0 ? "\n" : "{\"device\":\"crane-01\"}\n")
                if !closed { await pause(50) }
                closed = closed || source.counters.clientsClosed[.idleTimeout] == 1
            }
            #expect(closed)
            #expect(await chatty.waitForClose(timeout: 10))
            #expect(source.counters.clientsClosed[.idleTimeout] == 1)
            #expect(c.count == 0)
        }
    }

    /// A line that never ends (a byte now and then, never a newline) is closed by the line
    /// timeout and counted as an incomplete line, though the idle timeout is off.
    @Test func slowPartialLineIsClosed() async throws {
        let options = TwinSocketSource.Options(idleTimeoutMs: 0, lineTimeoutMs: 500)
        try await withTCP(options: options) { source, c, port in
            let slow = try FeedClient(tcpPort: port)
            let good = try FeedClient(tcpPort: port)
            #expect(good.send(Twin.line(seq: 1) + "\n"))
            let partial = Array((Twin.line(seq: 2) + "\n").utf8)
            var closed = false
            for byte in partial.dropLast() where !closed {
                closed = !slow.send([byte]) || source.counters.clientsClosed[.lineTimeout] == 1
                if !closed { await pause(50) }
            }
            #expect(closed, "the partial line was cut before its last byte")
            #expect(await slow.waitForClose(timeout: 10))
            #expect(source.counters.clientsClosed[.lineTimeout] == 1)
            #expect(source.counters.dropped[.incompleteLine] == 1)
            #expect(good.send(Twin.line(seq: 3) + "\n"))
            #expect(await eventually { c.seqs("crane-01") == [1, 3] })
        }
    }
}
