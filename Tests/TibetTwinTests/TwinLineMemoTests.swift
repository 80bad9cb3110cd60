import Testing
@testable import TibetTwin

/// `TwinLineMemo`: a line that repeats its device's last accepted line but for `ts` and `seq`
/// gives what a full parse gives, and anything else is parsed in full. (Debug builds also parse
/// every repeat in full and assert both agree.)
@Suite struct TwinLineMemoTests {
    typealias F = TwinFixtures

    func parse(_ p: TwinLineParser, _ line: String, _ memo: inout TwinLineMemo,
               received: ClockReading = F.received) -> TwinLineOutcome {
        Array(line.utf8).withUnsafeBufferPointer { p.parse(buffer: $0, received: received, memo: &memo) }
    }

    func full(_ p: TwinLineParser, _ line: String, received: ClockReading = F.received) -> TwinLineOutcome {
        p.parse(Array(line.utf8), received: received)
    }

    @Test func aRepeatGivesTheFullParseWithTheNewTimeAndSeq() {
        let p = F.parser()
        var memo = TwinLineMemo()
        let first = F.line(ts: "2026-11-26T14:32:00.500Z", seq: 41)
        #expect(parse(p, first, &memo) == full(p, first))
        #expect(memo.parsed == 1 && memo.repeats == 0 && memo.count == 1)
        for (ts, seq) in [("2026-11-26T14:32:00.550Z", 42), ("2026-11-26T14:32:00.600+00:00", 43), ("2026-11-26T15:32:00.650+01:00", 44)] {
            let line = F.line(ts: ts, seq: seq)
            let out = parse(p, line, &memo)
            #expect(out == full(p, line))
            #expect(out.state?.seq == UInt64(seq))
        }
        // The second line repeats the first; the third changes the length of `ts` (parsed in
        // full, remembered), the fourth repeats the third.
        #expect(memo.repeats == 2)
        #expect(memo.parsed == 2)
        // The values are the remembered dictionary, not a new one.
        let a = parse(p, F.line(ts: "2026-11-26T14:32:00.700+01:00", seq: 45), &memo).state!
        let b = parse(p, F.line(ts: "2026-11-26T14:32:00.750+01:00", seq: 46), &memo).state!
        #expect(memo.repeats == 4)
        #expect(a.values == b.values && a.tsNs + 50_000_000 == b.tsNs)
    }

    @Test func anythingElseIsParsedInFull() {
        let p = F.parser(skew: 1000)
        var memo = TwinLineMemo()
        _ = parse(p, F.line(seq: 10), &memo)
        let cases: [(String, TwinDropReason?)] = [
            // Other values, other status: accepted, parsed in full.
            (F.line(seq: 11, values: #"{"position_x":12.6,"load_kg":2500}"#), nil),
            (F.line(seq: 12, status: "fault"), nil),
            // The same bytes around `seq` and `ts`, but what they hold is not a plain repeat.
            (F.line(seq: 13).replacingOccurrences(of: #""seq":13"#, with: #""seq":01"#), .notJSON),
            (F.line(ts: "2026-11-26T14:32:0\"500Z", seq: 14), .notJSON),
            (F.line(ts: "2026-11-26T14:32:00.5\\u0030Z", seq: 15), nil),
            (F.line(ts: "2026-11-26T14:32:00.5X0Z", seq: 16), .badTimestamp),
            (F.line(ts: "2026-11-26T14:32:09.500Z", seq: 17), .futureTimestamp),
            (F.line(seq: 9_007_199_254_740_993), .seqOutOfRange),
        ]
        for (line, reason) in cases {
            let out = parse(p, line, &memo)
            #expect(out == full(p, line), "\(line)")
            #expect(out.reason == reason, "\(line)")
        }
        #expect(memo.repeats == 0)
        // The last line remembered is the one with status fault (seq 12): these two repeat it.
        let again = F.line(ts: "2026-11-26T14:32:00.600Z", seq: 20, status: "fault")
        _ = parse(p, F.line(ts: "2026-11-26T14:32:00.500Z", seq: 19, status: "fault"), &memo)
        #expect(parse(p, again, &memo) == full(p, again))
        #expect(memo.repeats == 2)
    }

    @Test func signedLinesAndOtherShapesAreNotRemembered() {
        let p = F.parser()
        var memo = TwinLineMemo()
        // A device with a twin key: every line's signature is checked.
        let signed = F.signed(F.line(device: "crane-02", seq: 1))
        #expect(parse(p, signed, &memo).state?.signature == .valid)
        // `device` not first, or written with an escape: parsed in full every time.
        let reordered = #"{"ts":"2026-11-26T14:32:00.500Z","device":"crane-01","seq":1,"status":"operational","values":{}}"#
        let escaped = #"{"device":"crane\u002d01","ts":"2026-11-26T14:32:00.500Z","seq":2,"status":"operational","values":{}}"#
        for line in [reordered, escaped] {
            #expect(parse(p, line, &memo) == full(p, line))
        }
        #expect(memo.count == 0)
    }

    @Test func aLineIsSeenAsRoutineOnlyWhenItRepeatsItsDevicesLineOutsideTimeAndSeq() {
        let p = F.parser()
        var memo = TwinLineMemo()
        func sight(_ line: String, _ parser: TwinLineParser? = nil) -> TwinLineMemo.Sight {
            Array(line.utf8).withUnsafeBufferPointer { memo.sight($0, parser: parser ?? p) }
        }
        // Nothing remembered yet: news, for no entry.
        #expect(sight(F.line(seq: 1)) == .news(nil))
        _ = parse(p, F.line(seq: 1), &memo)
        guard case .routine(let k) = sight(F.line(ts: "2026-11-26T14:32:00.550Z", seq: 2)) else {
            Issue.record("a repeat but for ts and seq is routine")
            return
        }
        // Another status, a value, or a seq of another length: news for the same entry.
        #expect(sight(F.line(seq: 2, status: "fault")) == .news(k))
        #expect(sight(F.line(seq: 2, values: #"{"position_x":12.6,"load_kg":2500}"#)) == .news(k))
        #expect(sight(F.line(seq: 20)) == .news(k))
        // Another device, a line not of the `{"device":"name"` shape, another parser's lines.
        #expect(sight(F.line(device: "crane-02", seq: 2)) == .news(nil))
        #expect(sight(#"{"ts":"2026-11-26T14:32:00.500Z","device":"crane-01","seq":2,"status":"operational","values":{}}"#) == .unnamed)
        #expect(sight("junk") == .unnamed)
        #expect(sight(F.line(ts: "2026-11-26T14:32:00.550Z", seq: 2), F.parser()) == .news(nil))
        // A forgotten device's next line is news.
        memo.forget(device: "crane-01")
        #expect(sight(F.line(ts: "2026-11-26T14:32:00.550Z", seq: 2)) == .news(k))
    }

    @Test func manyDevicesAreFoundByTheirNamesBytes() {
        let names = (0..<300).map { "dev-\($0)" } + ["d", "dev-1x", "\u{00e9}t\u{00e9}-1"]
        let p = try! TwinLineParser(maps: names.map { F.map($0) }, keys: [:])
        var memo = TwinLineMemo()
        for (i, n) in names.enumerated() {
            #expect(parse(p, F.line(device: n, seq: i + 1), &memo).state?.device == n)
        }
        #expect(memo.count == names.count && memo.parsed == UInt64(names.count))
        for (i, n) in names.enumerated() {
            let out = parse(p, F.line(device: n, ts: "2026-11-26T14:32:00.550Z", seq: i + 1), &memo)
            #expect(out.state?.device == n)
        }
        #expect(memo.repeats == UInt64(names.count))
        for n in names where n.hasSuffix("1") { memo.forget(device: n) }
        #expect(memo.count == names.count - names.filter { $0.hasSuffix("1") }.count)
    }

    @Test func aNewParserStartsAnEmptyMemo() {
        var memo = TwinLineMemo()
        _ = parse(F.parser(), F.line(seq: 1), &memo)
        #expect(memo.count == 1)
        // A reload: the same device now allows no skew at all, so the remembered rules must not be used.
        let strict = F.parser(skew: 0)
        let ahead = ClockReading(monotonicNs: F.received.monotonicNs, wallNs: F.wall - 1_000_000)
        let line = F.line(ts: "2026-11-26T14:32:00.500Z", seq: 2)
        #expect(parse(strict, line, &memo, received: ahead).reason == .futureTimestamp)
        #expect(memo.repeats == 0)
    }

    @Test func theRememberedTimeChecksUseTheLinesOwnReceipt() {
        let p = F.parser(skew: 100)
        var memo = TwinLineMemo()
        _ = parse(p, F.line(ts: "2026-11-26T14:32:00.500Z", seq: 1), &memo)
        // Same shape, 150 ms ahead of this clock: dropped, as a full parse drops it.
        let line = F.line(ts: "2026-11-26T14:32:00.650Z", seq: 2)
        #expect(parse(p, line, &memo).reason == .futureTimestamp)
        // 50 ms ahead: a repeat.
        let ok = F.line(ts: "2026-11-26T14:32:00.550Z", seq: 3)
        #expect(parse(p, ok, &memo) == full(p, ok))
        #expect(memo.repeats == 1)
    }
}

/// `DeviceGuard`: a state that repeats the last one but for its time keeps the state-only checks
/// and judges drift again; a changed one is judged in full. (Debug builds assert on every
/// repeat that the kept checks equal a full recomputation.)
@Suite struct RepeatedStateTests {
    @Test func driftIsJudgedOnEveryRepeatAndContentChangesStillCount() {
        let f = Fixture(.port)
        var g = DeviceGuard(map: f.map)
        let p = f.physical()
        let t = f.twin(relativeTo: p)
        g.updatePhysical(p)
        g.updateTwin(t)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).permit)
        #expect(g.masksCurrent)
        // The same twin content with a ts beyond max_drift: drift alone fails.
        var late = t
        late.tsNs = p.physicalWallNs - Int64((f.maxDriftMs + 50) * 1_000_000)
        late.seq = 2
        #expect(late.repeats(t))
        g.updateTwin(late)
        g.evaluate(now: f.now, auditOK: true)
        #expect(!g.verdict(intent: 0).permit)
        #expect(g.verdict(intent: 0).failing == [.drift])
        // Back within drift: only drift was failing, so it passes again.
        var back = late
        back.tsNs = t.tsNs
        back.seq = 3
        g.updateTwin(back)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).permit)
        // A repeated physical state (a new poll of the same registers) passes too.
        var again = p
        again.time = p.time.adding(milliseconds: 1)
        #expect(again.repeats(p))
        g.updatePhysical(again)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).permit)
        // Changed content on either side is judged in full.
        var fault = back
        fault.status = "fault"
        #expect(!fault.repeats(back))
        g.updateTwin(fault)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).failing.contains(.status))
        g.updateTwin(back)
        var heavy = again
        heavy.values["load_kg"] = Reading(value: .uint(2700), quality: .good)
        #expect(!heavy.repeats(again))
        g.updatePhysical(heavy)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).failing == [.values])
    }

    @Test func aWithdrawnTwinIsNeverARepeat() {
        let f = Fixture(.port)
        var g = DeviceGuard(map: f.map)
        let p = f.physical(), t = f.twin(relativeTo: p)
        g.updatePhysical(p)
        g.updateTwin(t)
        g.evaluate(now: f.now, auditOK: true)
        g.withdrawTwin()
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).failing.contains(.twin))
        g.updateTwin(t)
        g.evaluate(now: f.now, auditOK: true)
        #expect(g.verdict(intent: 0).permit)
    }
}
