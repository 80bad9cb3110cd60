import Crypto
import Foundation
import Testing
import TibetTwin
@testable import Appliance

/// `audit.retain`: old segments removed at a rotation behind a signed `audit_retained` cut record.
@Suite("Audit retention")
struct AuditRetentionTests {
    func retaining(_ fx: AuditFixture, segmentBytes: Int = 3000, maxBytes: Int? = nil, maxAgeDays: Int? = nil) -> AuditStore.Configuration {
        var c = fx.config(segmentBytes: segmentBytes)
        c.retainMaxBytes = maxBytes
        c.retainMaxAgeDays = maxAgeDays
        return c
    }

    func segmentBytesOnDisk(_ fx: AuditFixture) throws -> (numbers: [Int], bytes: Int) {
        let numbers = try AuditFS.segmentNumbers(in: fx.dir)
        var total = 0
        for n in numbers {
            total += (try FileManager.default.attributesOfItem(atPath: fx.segmentPath(n))[.size] as? Int) ?? 0
        }
        return (numbers, total)
    }

    @Test func maxBytesRemovesOldSegmentsBehindASignedCutAndVerifyStillPasses() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(retaining(fx, maxBytes: 12_000))
        var peak = 0
        for i in 0..<200 {
            _ = await store.submitAndWait(record(i))
            peak = max(peak, try segmentBytesOnDisk(fx).bytes)
        }
        store.close()
        let (numbers, bytes) = try segmentBytesOnDisk(fx)
        #expect(numbers.first! > 1)
        #expect(numbers == Array(numbers.first!...numbers.last!))
        // Kept: at most max_bytes at the cut, plus the segment just closed and the current one.
        #expect(bytes <= 12_000 + 2 * 3000 + 4096)
        #expect(peak <= 12_000 + 3 * 3000 + 4096)
        let summary = try fx.verify().get()
        let cut = try #require(summary.cut)
        #expect(cut.contains("kept chain starts at \(AuditSegment.name(numbers.first!))"))
        #expect(summary.text.contains("removed by retention"))
        let pinned = try fx.verify(pinned: [fx.key.publicKey]).get()
        #expect(pinned.pinned)
        // The cut records say what went and why.
        let cuts = try fx.tokens().filter { $0.action == .auditRetained }
        let last = try #require(cuts.last)
        #expect(last.erin["reason"]?.stringValue == "max_bytes")
        #expect(last.erin["first_kept_segment"]?.intValue.map(Int.init) ?? 0 <= numbers.first!)
        #expect((last.erin["removed_tokens"]?.intValue ?? 0) > 0)
        #expect(last.erin["last_removed_id"]?.stringValue != nil)
        #expect(last.erin["key_id"]?.stringValue == KeyText.fingerprint(of: fx.key.publicKey))
        // Recovery on open copes with the missing early segments: it resumes the same chain.
        let again = try AuditStore.open(retaining(fx, maxBytes: 12_000))
        for i in 0..<50 { _ = await again.submitAndWait(record(i)) }
        again.close()
        let after = try fx.verify().get()
        #expect(after.cut != nil)
        #expect(!(try fx.tokens().contains { $0.erin["new_chain"] != nil }))
    }

    @Test func segmentsDeletedByHandWithoutACutRecordFailVerify() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(fx.config(segmentBytes: 3000))
        for i in 0..<40 { _ = await store.submitAndWait(record(i)) }
        store.close()
        try FileManager.default.removeItem(atPath: fx.segmentPath(1))
        try FileManager.default.removeItem(atPath: fx.segmentPath(2))
        let f = try #require(failure(try fx.verify()))
        #expect(f.kind == .segment)
        #expect(f.file.hasSuffix(AuditSegment.name(3)))
        #expect(f.description.contains("earlier segments removed"))
    }

    @Test func deletingTheFirstKeptSegmentAfterACutFailsVerify() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(retaining(fx, maxBytes: 12_000))
        for i in 0..<120 { _ = await store.submitAndWait(record(i)) }
        store.close()
        let numbers = try AuditFS.segmentNumbers(in: fx.dir)
        #expect(numbers.first! > 1)
        #expect((try? fx.verify().get()) != nil)
        // One more segment gone by hand: no cut record vouches for that one.
        try FileManager.default.removeItem(atPath: fx.segmentPath(numbers.first!))
        let f = try #require(failure(try fx.verify()))
        #expect(f.kind == .segment)
        #expect(f.file.hasSuffix(AuditSegment.name(numbers.first! + 1)))
    }

    @Test func crashBetweenCutRecordAndUnlinkLeavesOldSegmentsThatStillVerify() async throws {
        let fx = try AuditFixture()
        // Segments written without retention, kept aside as the crash would have left them.
        let first = try AuditStore.open(fx.config(segmentBytes: 3000))
        for i in 0..<40 { _ = await first.submitAndWait(record(i)) }
        first.close()
        let backup = fx.root + "/backup"
        try FileManager.default.copyItem(atPath: fx.dir, toPath: backup)
        let backedUp = try AuditFS.segmentNumbers(in: backup)
        let store = try AuditStore.open(retaining(fx, maxBytes: 12_000))
        for i in 0..<8 { _ = await store.submitAndWait(record(i)) }
        store.close()
        let kept = try AuditFS.segmentNumbers(in: fx.dir)
        try #require(kept.first! > 2 && kept.first! - 1 <= backedUp.last!)
        // Only the last removed segment back (the unlinks went oldest first and stopped there).
        try FileManager.default.copyItem(atPath: backup + "/" + AuditSegment.name(kept.first! - 1),
                                         toPath: fx.segmentPath(kept.first! - 1))
        let partial = try fx.verify().get()
        #expect(partial.cut?.contains(AuditSegment.name(kept.first! - 1)) == true)
        // All of them back: the whole chain from segment 1, the cut record verified in line.
        for n in 1..<(kept.first! - 1) {
            try FileManager.default.copyItem(atPath: backup + "/" + AuditSegment.name(n), toPath: fx.segmentPath(n))
        }
        let whole = try fx.verify().get()
        #expect(whole.cut == nil)
        #expect(whole.segments == kept.last!)
    }

    @Test func cutAfterAKeyRotationVerifiesTheKeptOldKeyTokensWithTheOldKey() async throws {
        let fx = try AuditFixture()
        let old = try AuditStore.open(fx.config(segmentBytes: 3000))
        for i in 0..<40 { _ = await old.submitAndWait(record(i)) }
        old.close()
        let newKey = Curve25519.Signing.PrivateKey()
        try fx.writeKey(newKey, to: fx.keyPath)
        let store = try AuditStore.open(retaining(fx, maxBytes: 12_000))
        for i in 0..<4 { _ = await store.submitAndWait(record(i)) }
        store.close()
        let first = try #require(try AuditFS.segmentNumbers(in: fx.dir).first)
        #expect(first > 1)
        let cuts = try fx.tokens().filter { $0.action == .auditRetained }
        #expect(!cuts.isEmpty)
        for cut in cuts {  // later cuts carry the old key on from the earlier cut record
            #expect(cut.erin["kept_key_id"]?.stringValue == KeyText.fingerprint(of: fx.key.publicKey))
            #expect(cut.erin["key_id"]?.stringValue == KeyText.fingerprint(of: newKey.publicKey))
        }
        // The first kept tokens are the old key's: verified with it, then the rotation.
        let summary = try fx.verify(pinned: [fx.key.publicKey, newKey.publicKey]).get()
        #expect(summary.keys.map(\.fingerprint) == [KeyText.fingerprint(of: fx.key.publicKey), KeyText.fingerprint(of: newKey.publicKey)])
        #expect(summary.cut != nil)
        // Pinning only the new key: the kept old-key part is not vouched for.
        #expect(failure(try fx.verify(pinned: [newKey.publicKey])) != nil)
    }

    @Test func maxAgeDaysRemovesSegmentsOlderThanTheBoundByTheStoresClock() async throws {
        let fx = try AuditFixture()
        let t0: Int64 = 1_800_000_000 * 1_000_000_000
        let clock = ManualTimeSource(wallNs: t0)
        func aged(_ i: Int) -> AuditRecord {
            AuditRecord(action: .permitChanged, erin: ["i": .int(Int64(i))], eraan: ["jis": "jis:crane-01"],
                        erachter: ["intent": "move_left"], time: clock.now())
        }
        let store = try AuditStore.open(retaining(fx, maxAgeDays: 2), time: clock)
        for i in 0..<40 { _ = await store.submitAndWait(aged(i)) }
        // A day later nothing is old enough.
        clock.advance(milliseconds: 86_400_000)
        for i in 0..<20 { _ = await store.submitAndWait(aged(i)) }
        #expect(try AuditFS.segmentNumbers(in: fx.dir).first == 1)
        // Three days after the start the first day's segments go at the next rotations.
        clock.advance(milliseconds: 2 * 86_400_000)
        for i in 0..<40 { _ = await store.submitAndWait(aged(i)) }
        store.close()
        #expect(try AuditFS.segmentNumbers(in: fx.dir).first! > 1)
        let cuts = try fx.tokens().filter { $0.action == .auditRetained }
        #expect(cuts.first?.erin["reason"]?.stringValue == "max_age_days")
        // Every removed segment ended before the bound; everything from the second day is kept.
        #expect(try fx.tokens().filter { RFC3339.parse($0.timestamp)! == t0 + 86_400 * 1_000_000_000 }.count >= 20)
        #expect(try fx.verify().get().cut != nil)
    }
}
