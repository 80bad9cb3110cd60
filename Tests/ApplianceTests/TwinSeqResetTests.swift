#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Synchronization
import Testing
@testable import Appliance
import TibetTwin
import TestSupport

/// Issue 17 in the appliance: a twin whose `seq` went ahead (to 2^53) gets back in only through
/// an audited restart after a silence, and status shows `seq` unsigned.
@Suite("Twin seq restart, audited")
struct TwinSeqResetTests {
    static let t0 = ClockReading(monotonicNs: 50_000_000_000, wallNs: 1_795_703_520_500_000_000)

    static func at(ms: Int64) -> ClockReading {
        ClockReading(monotonicNs: t0.monotonicNs + ms * 1_000_000, wallNs: t0.wallNs + ms * 1_000_000)
    }

    /// A line for crane-01 with `seq`, `ts` = the reading's wall time.
    static func line(seq: UInt64, at r: ClockReading) -> [UInt8] {
        Array(#"{"device":"crane-01","ts":"\#(RFC3339.format(wallNs: r.wallNs))","seq":\#(seq),"status":"operational","values":{"position_x":12.5,"load_kg":2500}}"#.utf8)
    }

    static func process(_ feed: TwinFeedPipeline, seq: UInt64, atMs ms: Int64) -> Outcome {
        let r = at(ms: ms)
        return Outcome(line(seq: seq, at: r).withUnsafeBufferPointer { feed.process($0, received: r) })
    }

    /// A line's outcome: `reason` nil when accepted.
    struct Outcome {
        var reason: TwinDropReason?
        var detail = ""
        init(_ o: TwinLineOutcome) {
            switch o {
            case .accepted: reason = nil
            case .identityFailure(_, let d), .dropped(let d): reason = d.reason; detail = d.detail
            }
        }
    }

    @Test func aTwinStuckAtTheTopIsLetBackOnlyAfterSilenceAndTheRestartIsOnTheChain() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(fx.config())
        let states = Mutex<[TwinState]>([])
        let resets = TwinSeqResetAudit(audit: store, logger: Twin.quiet)
        let feed = TwinFeedPipeline(parser: Twin.parser(), seqReset: { resets.record($0) }) { s in states.withLock { $0.append(s) } }

        #expect(Self.process(feed, seq: 18_446_744_073_709_551_615, atMs: 0).reason == .seqOutOfRange)
        #expect(Self.process(feed, seq: TwinState.maxSeq, atMs: 10).reason == nil)
        #expect(Self.process(feed, seq: 1042, atMs: 100).reason == .replay)      // fresh: no restart
        #expect(Self.process(feed, seq: 1043, atMs: 1000).reason == .replay)     // 990 ms < 1000 ms
        #expect(Self.process(feed, seq: 1044, atMs: 1020).reason == nil)         // the audited restart
        #expect(Self.process(feed, seq: 1045, atMs: 1050).reason == nil)
        #expect(states.withLock { $0.compactMap(\.seq) } == [TwinState.maxSeq, 1044, 1045])

        store.close(reason: "test over")
        let tokens = try fx.tokens()
        let reset = try #require(tokens.first { $0.action == .twinSeqReset })
        #expect(tokens.filter { $0.action == .twinSeqReset }.count == 1)
        #expect(reset.erin["device"] == "crane-01")
        #expect(reset.erin["from_seq"] == .int(9_007_199_254_740_992))
        #expect(reset.erin["to_seq"] == .int(1044))
        #expect(reset.eraan["twin_seq"] == .int(1044))
        #expect((reset.erin["silent_ms"]?.doubleValue ?? 0) >= 1000)
        #expect(reset.erin["after_ms"]?.doubleValue == 1000)
        _ = try fx.verify(pinned: [fx.key.publicKey]).get()
    }

    @Test func noRestartWhileTheAuditChainIsUnhealthy() async throws {
        let fx = try AuditFixture()
        let disk = DiskSwitch()
        let store = try AuditStore.open(fx.config(retryMs: 60_000, hooks: disk.hooks))
        let states = Mutex<[TwinState]>([])
        let logs = LogStore()
        let resets = TwinSeqResetAudit(audit: store, logger: logs.logger)
        let feed = TwinFeedPipeline(parser: Twin.parser(), seqReset: { resets.record($0) }) { s in states.withLock { $0.append(s) } }
        #expect(Self.process(feed, seq: 500, atMs: 0).reason == nil)
        disk.failWith.store(EIO, ordering: .releasing)
        // A rise the failing disk refuses (a reporting record would be held until the disk works).
        #expect(!(await store.submitAndWait(record(1, .gating))).isDurable)
        #expect(!store.isHealthy)
        let out = Self.process(feed, seq: 7, atMs: 5000)
        #expect(out.reason == .replay)
        #expect(out.detail.contains("audit"), "\(out.detail)")
        // A twin going on at several lines a second while the chain stays down: refused each
        // time, logged once (a minute's rate limit per device).
        for k in 1...20 { #expect(Self.process(feed, seq: 7 + UInt64(k), atMs: 5000 + Int64(k) * 100).reason == .replay) }
        #expect(logs.all.filter { $0.message.contains("restart refused") }.count == 1)
        #expect(states.withLock { $0.compactMap(\.seq) } == [500])
        disk.failWith.store(0, ordering: .releasing)
        store.close(reason: "test over")
        #expect(try fx.tokens().allSatisfy { $0.action != .twinSeqReset })
    }

    @Test func statusShowsSeqUnsigned() throws {
        for (seq, shown) in [(TwinState.maxSeq, "9007199254740992"), (UInt64.max, "9223372036854775807")] {
            let snap = StatusSnapshot(node: "guard-01", healthy: true, auditHealthy: true, heartbeat: 1, wallNs: 0,
                                      devices: [DeviceStatus(device: "crane-01", intents: [], twinSeq: seq)])
            var text = ""
            snap.json.write(into: &text)
            #expect(text.contains(#""twin_seq":\#(shown)"#), "\(text)")
            #expect(!text.contains(#""twin_seq":-"#))
            let back = try #require(StatusSnapshot(json: snap.json))
            #expect(back.devices.first?.twinSeq.map(String.init) == shown)
            // The terminal view (tibet-twin status) and the page, from the JSON as the CLI reads it.
            #expect(back.text(color: false).contains("seq \(shown)"))
            #expect(back.html.contains("seq \(shown)"))
            #expect(!back.text(color: false).contains("seq -") && !back.html.contains("seq -"))
        }
    }
}

/// Which accepted lines wake the guard: a line its source's memo recognised is not news, unless
/// another source spoke for the device since (the guard may hold what that one said).
@Suite struct TwinNewsTests {
    @Test func aRepeatIsNewsWhenAnotherSourceSpokeSince() {
        let got = Mutex<[String]>([])
        let feed = TwinFeedPipeline(parser: Twin.parser(), newsSink: { s, news in got.withLock { $0.append("\(s.status) \(news)") } })
        var a = TwinLineMemo(), b = TwinLineMemo()
        // ts a second ago, on whole milliseconds, so each line has the same length.
        let base = (SystemTimeSource().now().wallNs / 1_000_000_000 - 1) * 1_000_000_000 + 111_000_000
        func line(_ k: Int, _ status: String) -> [UInt8] {
            let ts = RFC3339.format(wallNs: base + Int64(k) * 1_000_000)
            return Array(#"{"device":"crane-01","ts":"\#(ts)","seq":\#(10 + k),"status":"\#(status)","values":{"position_x":12.5,"load_kg":2500}}"#.utf8)
        }
        func send(_ memo: inout TwinLineMemo, _ k: Int, _ status: String) {
            let l = line(k, status)
            _ = l.withUnsafeBufferPointer { feed.process($0, received: SystemTimeSource().now(), memo: &memo) }
        }
        send(&a, 0, "operational")  // first: parsed in full
        send(&a, 1, "operational")  // repeats a's last line
        send(&b, 2, "fault")        // another source
        send(&a, 3, "operational")  // repeats a's last line, but b spoke since
        send(&a, 4, "operational")
        #expect(got.withLock { $0 } == ["operational true", "operational false", "fault true", "operational true", "operational false"])
        #expect(a.repeats == 3)
    }
}
