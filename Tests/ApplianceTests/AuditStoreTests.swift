#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import Synchronization
import Testing
@testable import Appliance
import TibetTwin
import TestSupport

/// A temporary audit directory with a signing key file (mode 0600), removed afterwards.
final class AuditFixture: @unchecked Sendable {
    let root: String
    let dir: String
    let keyPath: String
    let key: Curve25519.Signing.PrivateKey

    init(key: Curve25519.Signing.PrivateKey = Curve25519.Signing.PrivateKey()) throws {
        var template = Array("/tmp/tibet-audit-test-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw POSIXError(.EIO) }
        root = String(cString: p)
        dir = root + "/audit"
        keyPath = root + "/guard.key"
        self.key = key
        try writeKey(key, to: keyPath)
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    func writeKey(_ k: Curve25519.Signing.PrivateKey, to path: String, mode: Int = 0o600) throws {
        try Data(KeyText.text(of: k).utf8).write(to: URL(fileURLWithPath: path))
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
    }

    func config(segmentBytes: Int = 8 << 20, retryMs: Int = 20, checkpointMs: Int? = nil, stallMs: Int = 60_000,
                maxQueued: Int = 100_000, maxBatch: Int = 4096, backlogHigh: Int = 2048, hooks: AuditIOHooks? = nil,
                keyPath: String? = nil) -> AuditStore.Configuration {
        AuditStore.Configuration(directory: dir, keyPath: keyPath ?? self.keyPath, node: "guard-01", host: "test-host",
                                 segmentBytes: segmentBytes, maxBatch: maxBatch, retryIntervalMs: retryMs,
                                 checkpointIntervalMs: checkpointMs, stallMs: stallMs, maxQueued: maxQueued,
                                 backlogHigh: backlogHigh, hooks: hooks)
    }

    func segmentPath(_ n: Int) -> String { dir + "/" + AuditSegment.name(n) }

    func tokens() throws -> [TibetToken] { try AuditDirectory.tokens(dir).map(\.token) }

    func verify(pinned: [Curve25519.Signing.PublicKey] = []) throws -> AuditDirectory.Verdict {
        try AuditDirectory.verify(dir, pinnedKeys: pinned)
    }

    func lines(_ n: Int) throws -> [String] {
        String(decoding: try Data(contentsOf: URL(fileURLWithPath: segmentPath(n))), as: UTF8.self)
            .split(separator: "\n").map(String.init)
    }
}

func record(_ i: Int, _ timing: AuditRecord.Timing = .reporting, action: TokenAction = .permitChanged) -> AuditRecord {
    AuditRecord(action: action, erin: ["device": "crane-01", "intent": "move_left", "allowed": .bool(i % 2 == 0),
                                       "reason": "BLOCKED: test", "i": .int(Int64(i))],
                eraan: ["jis": "jis:crane-01"], erachter: ["intent": "move_left"],
                time: SystemTimeSource().now(), timing: timing)
}

/// A switch a test flips to make the store's disk I/O fail, or to hold its fdatasync.
final class DiskSwitch: Sendable {
    let failWith = Atomic<Int32>(0)
    let holdSync = Atomic<Bool>(false)
    let syncsHeld = Atomic<Int>(0)

    var hooks: AuditIOHooks {
        AuditIOHooks(
            beforeWrite: { _, _ in let e = self.failWith.load(ordering: .acquiring); return e == 0 ? nil : e },
            beforeSync: { _ in
                if self.holdSync.load(ordering: .acquiring) {
                    self.syncsHeld.add(1, ordering: .acquiringAndReleasing)
                    while self.holdSync.load(ordering: .acquiring) { usleep(500) }
                }
                return nil
            })
    }
}

@Suite("Audit store")
struct AuditStoreTests {
    @Test func writesSignedChainAndAcknowledgesEveryRecord() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(fx.config())
        var ids: [String] = []
        for i in 0..<20 {
            let ack = await store.submitAndWait(record(i, i % 3 == 0 ? .gating : .reporting))
            #expect(ack.isDurable)
            ids.append(try #require(ack.tokenId))
        }
        #expect(store.isHealthy)
        store.close(reason: "test over")
        let tokens = try fx.tokens()
        #expect(tokens.count == 22)
        #expect(tokens.first?.action == .started)
        #expect(tokens.first?.erin["public_key"]?.stringValue == Base64.encode(Array(fx.key.publicKey.rawRepresentation)))
        #expect(tokens.last?.action == .stopped)
        #expect(tokens.last?.erin["reason"] == "test over")
        #expect(Array(tokens.dropFirst().dropLast().map(\.tokenId)) == ids)
        #expect(tokens[1].eromheen["node"] == "guard-01" && tokens[1].eromheen["host"] == "test-host")
        #expect(tokens[1].actor == "jis:guard-01")
        let summary = try fx.verify(pinned: [fx.key.publicKey]).get()
        #expect(summary.tokens == 22 && summary.pinned)
        let mode = try FileManager.default.attributesOfItem(atPath: fx.segmentPath(1))[.posixPermissions] as? Int
        #expect(mode == 0o640)
    }

    @Test func refusesAKeyReadableByOthers() throws {
        let fx = try AuditFixture()
        for mode in [0o644, 0o640, 0o604, 0o660] {
            try fx.writeKey(fx.key, to: fx.keyPath, mode: mode)
            #expect(throws: AuditError.self) { _ = try AuditStore.open(fx.config()) }
            do { _ = try AuditStore.open(fx.config()) } catch {
                #expect(error.kind == .keyPermissions)
                #expect(error.description.contains("chmod 600"))
            }
        }
        // Nothing was written meanwhile.
        #expect(!FileManager.default.fileExists(atPath: fx.segmentPath(1)))
        try fx.writeKey(fx.key, to: fx.keyPath, mode: 0o600)
        try AuditStore.open(fx.config()).close()
        try fx.writeKey(fx.key, to: fx.keyPath, mode: 0o400)
        try AuditStore.open(fx.config()).close()
        #expect(throws: AuditError.self) { _ = try AuditStore.open(fx.config(keyPath: fx.root + "/missing.key")) }
    }

    @Test func secondWriterIsLockedOut() throws {
        let fx = try AuditFixture()
        let a = try AuditStore.open(fx.config())
        do {
            _ = try AuditStore.open(fx.config())
            Issue.record("a second store opened the same directory")
        } catch {
            #expect(error.kind == .locked)
        }
        a.close()
        try AuditStore.open(fx.config()).close()
    }

    @Test func rotatesSegmentsAndLinksAcrossThem() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(fx.config(segmentBytes: 3000))
        for i in 0..<40 { _ = await store.submitAndWait(record(i)) }
        store.close()
        let summary = try fx.verify().get()
        #expect(summary.segments >= 5)
        #expect(summary.tokens == 42)
        // Each new segment begins with a token whose parent is the last of the segment before.
        let first2 = try #require(try fx.lines(2).first)
        let last1 = try #require(try fx.lines(1).last)
        let a = try TibetToken(json: JSONParser.parse(last1))
        let b = try TibetToken(json: JSONParser.parse(first2))
        #expect(b.parentId == a.tokenId && b.prevHash == a.contentHash)
    }

    @Test func reopeningResumesTheChainWithoutReusingIds() async throws {
        let fx = try AuditFixture()
        var all: [String] = []
        for round in 0..<3 {
            let store = try AuditStore.open(fx.config(segmentBytes: 2500))
            for i in 0..<5 { all.append(try #require(await store.submitAndWait(record(round * 10 + i)).tokenId)) }
            store.close()
        }
        let tokens = try fx.tokens()
        #expect(Set(tokens.map(\.tokenId)).count == tokens.count)
        let starts = tokens.filter { $0.action == .started }
        #expect(starts.count == 3)
        #expect(starts[1].erin["resumed"]?["after"]?.stringValue == tokens[tokens.firstIndex(of: starts[1])! - 1].tokenId)
        #expect(starts[1].erin["resumed"]?["clean_stop"] == true)
        #expect(try fx.verify().get().tokens == 3 * 7)
        #expect(Set(all).isSubset(of: Set(tokens.map(\.tokenId))))
    }

    @Test func tornLastLineIsMovedAsideAndRecorded() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(fx.config())
        for i in 0..<5 { _ = await store.submitAndWait(record(i)) }
        store.close()
        let before = try Data(contentsOf: URL(fileURLWithPath: fx.segmentPath(1)))
        let torn = Data(#"{"action":"permit_changed","actor":"jis:guard-01","eraan":{"ji"#.utf8)
        try (before + torn).write(to: URL(fileURLWithPath: fx.segmentPath(1)))
        // `audit verify` names the torn line before the repair ...
        let f = try #require(failure(try fx.verify()))
        #expect(f.kind == .torn && f.line == 8)
        // ... and the store moves it aside on open.
        let reopened = try AuditStore.open(fx.config())
        reopened.close()
        let tornName = AuditSegment.tornName(segment: 1, offset: before.count)
        #expect(try Data(contentsOf: URL(fileURLWithPath: fx.dir + "/" + tornName)) == torn)
        let tokens = try fx.tokens()
        let started = try #require(tokens.last { $0.action == .started })
        #expect(started.erin["repair"]?["moved_to"]?.stringValue == tornName)
        #expect(started.erin["repair"]?["torn_bytes"] == .int(Int64(torn.count)))
        #expect(started.erin["repair"]?["line"] == 8)
        #expect(started.erin["resumed"]?["after"]?.stringValue == tokens[6].tokenId)
        let summary = try fx.verify().get()
        #expect(summary.repairs == 1)
    }

    /// A power cut can leave the file longer than what reached the disk, filled with zeros.
    @Test func zeroFilledTailIsMovedAside() async throws {
        let fx = try AuditFixture()
        try AuditStore.open(fx.config()).close()
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: fx.segmentPath(1)))
        try h.seekToEnd()
        try h.write(contentsOf: Data(repeating: 0, count: 4096))
        try h.close()
        try AuditStore.open(fx.config()).close()
        #expect(try fx.verify().get().repairs == 1)
        #expect(try AuditDirectory.tornFiles(fx.dir).count == 1)
    }

    @Test func tamperedTailStartsANewChainInANewSegment() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(fx.config())
        for i in 0..<6 { _ = await store.submitAndWait(record(i)) }
        store.close()
        var lines = try fx.lines(1)
        lines[lines.count - 1] = lines[lines.count - 1].replacingOccurrences(of: #""reason":"shutdown""#,
                                                                           with: #""reason":"nothing happened""#)
        try Data(lines.map { $0 + "\n" }.joined().utf8).write(to: URL(fileURLWithPath: fx.segmentPath(1)))
        let original = try Data(contentsOf: URL(fileURLWithPath: fx.segmentPath(1)))
        let reopened = try AuditStore.open(fx.config())
        _ = await reopened.submitAndWait(record(99))
        reopened.close()
        // The broken segment is left exactly as found; the new chain is in segment 2.
        #expect(try Data(contentsOf: URL(fileURLWithPath: fx.segmentPath(1))) == original)
        let first = try TibetToken(json: JSONParser.parse(try #require(try fx.lines(2).first)))
        #expect(first.action == .started && first.parentId == nil)
        let reason = try #require(first.erin["new_chain"]?["reason"]?.stringValue)
        #expect(reason.contains("tibet-1.jsonl:8: hash"))
        // verify names the tampered line, not the new chain.
        let f = try #require(failure(try fx.verify()))
        #expect(f.file.hasSuffix("tibet-1.jsonl") && f.line == 8 && f.kind == .hash, "\(f)")
        // The new chain continues the id numbering.
        #expect(first.tokenId == "guard-01-9")
    }

    /// The open-time check covers the last lines only (1024 by default; 3 here): a change
    /// inside that window starts a new chain, one before it is left to `audit verify`.
    @Test func tailCheckIsBoundedToTheLastLines() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(fx.config())
        for i in 0..<10 { _ = await store.submitAndWait(record(i)) }
        store.close()
        var lines = try fx.lines(1)
        #expect(lines.count == 12)
        func write() throws { try Data(lines.map { $0 + "\n" }.joined().utf8).write(to: URL(fileURLWithPath: fx.segmentPath(1))) }
        #expect(lines[4].contains(#""i":3,"#))
        lines[4] = lines[4].replacingOccurrences(of: #""i":3,"#, with: #""i":33,"#)
        try write()
        let outside = try AuditTail.recover(directory: fx.dir, node: "guard-01", window: 3)
        #expect(outside.startInfo["resumed"]?["after"]?.stringValue == "guard-01-12")
        #expect(outside.segment == 1)
        #expect(failure(try fx.verify())?.line == 5)
        #expect(lines[9].contains(#""i":8,"#))
        lines[9] = lines[9].replacingOccurrences(of: #""i":8,"#, with: #""i":88,"#)
        try write()
        let inside = try AuditTail.recover(directory: fx.dir, node: "guard-01", window: 3)
        #expect(inside.startInfo["new_chain"]?["reason"]?.stringValue?.contains("tibet-1.jsonl:10: hash") == true)
        #expect(inside.segment == 2)
    }

    /// `AuditDirectory.verify` checks signatures on all cores after the in-order checks; the
    /// failure it reports is still the earliest line, whichever check fails there.
    @Test func directoryVerifyReportsTheEarliestFailureWithParallelSignatures() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(fx.config())
        for i in 0..<60 { store.submit(record(i)) }
        store.close()
        let original = try fx.lines(1)
        var lines = original
        func write() throws { try Data(lines.map { $0 + "\n" }.joined().utf8).write(to: URL(fileURLWithPath: fx.segmentPath(1))) }
        // Line 40: changed content (hash). Line 12: a signature by another key.
        lines[39] = lines[39].replacingOccurrences(of: #""reason":"BLOCKED: test""#, with: #""reason":"BLOCKED: tes""#)
        try write()
        #expect(failure(try fx.verify()).map { "\($0.line) \($0.kind)" } == "40 hash")
        var t = try TibetToken(json: JSONParser.parse(lines[11]))
        try t.sign(with: Curve25519.Signing.PrivateKey())
        lines[11] = t.line
        try write()
        #expect(failure(try fx.verify()).map { "\($0.line) \($0.kind)" } == "12 signature")
        // And a signature failure after a hash failure does not hide it.
        lines = original
        var u = try TibetToken(json: JSONParser.parse(lines[49]))
        try u.sign(with: Curve25519.Signing.PrivateKey())
        lines[49] = u.line
        lines[19] = lines[19].replacingOccurrences(of: #""jis":"jis:crane-01""#, with: #""jis":"jis:crane-02""#)
        try write()
        #expect(failure(try fx.verify()).map { "\($0.line) \($0.kind)" } == "20 hash")
    }

    @Test func keyRotationAcrossRestartIsAnnouncedAndVerifiable() async throws {
        let fx = try AuditFixture()
        try AuditStore.open(fx.config()).close()
        let newKey = Curve25519.Signing.PrivateKey()
        try fx.writeKey(newKey, to: fx.keyPath)
        let store = try AuditStore.open(fx.config())
        _ = await store.submitAndWait(record(1))
        store.close()
        let starts = try fx.tokens().filter { $0.action == .started }
        #expect(starts[1].erin["previous_key_id"]?.stringValue == KeyText.fingerprint(of: fx.key.publicKey))
        #expect(starts[1].erin["key_id"]?.stringValue == KeyText.fingerprint(of: newKey.publicKey))
        #expect(try fx.verify().get().keys.count == 2)
        #expect(try fx.verify(pinned: [fx.key.publicKey, newKey.publicKey]).get().keys.count == 2)
        let f = try #require(failure(try fx.verify(pinned: [newKey.publicKey])))
        #expect(f.line == 1 && f.kind == .key)
    }

    /// Write or fdatasync fails: health 0 at once, gating records refused, reporting records
    /// held; when the disk works again the store recovers by itself, audits the outage, and
    /// writes the held records. Nothing acknowledged is lost.
    @Test(arguments: [(true, EIO), (false, ENOSPC)] as [(Bool, Int32)])
    func failsClosedAndRecoversByItself(failSync: Bool, errno code: Int32) async throws {
        let fx = try AuditFixture()
        let failing = Atomic<Bool>(false)
        let hooks = AuditIOHooks(
            beforeWrite: { _, _ in failSync ? nil : (failing.load(ordering: .acquiring) ? code : nil) },
            beforeSync: { _ in failSync ? (failing.load(ordering: .acquiring) ? code : nil) : nil })
        let healthChanges = Mutex<[Bool]>([])
        let store = try AuditStore.open(fx.config(retryMs: 20, hooks: hooks),
                                        onHealthChange: { h in healthChanges.withLock { $0.append(h) } })
        let before = await store.submitAndWait(record(0, .gating))
        #expect(before.isDurable)
        failing.store(true, ordering: .releasing)
        let rise = await store.submitAndWait(record(1, .gating))
        #expect(!rise.isDurable)
        #expect(rise.tokenId == nil)
        #expect(!store.isHealthy)
        #expect(store.stats.lastError?.contains(failSync ? "fdatasync" : "write") == true)
        // While failing: gating refused at once, reporting held (their acks come later).
        let refused = await store.submitAndWait(record(2, .gating))
        #expect(refused.error?.kind == .unhealthy)
        let heldAcks = Mutex<[AuditAck]>([])
        for i in 3..<8 { store.submit(record(i, .reporting)) { ack in heldAcks.withLock { $0.append(ack) } } }
        #expect(await eventually { store.stats.held == 5 })
        #expect(heldAcks.withLock { $0.isEmpty })
        failing.store(false, ordering: .releasing)
        #expect(await eventually { store.isHealthy })
        #expect(await eventually { heldAcks.withLock { $0.count } == 5 })
        #expect(heldAcks.withLock { $0.allSatisfy(\.isDurable) })
        let after = await store.submitAndWait(record(8, .gating))
        #expect(after.isDurable)
        store.close()
        #expect(healthChanges.withLock { $0 } == [false, true])
        let tokens = try fx.tokens()
        let recovered = try #require(tokens.first { $0.action == .auditRecovered })
        #expect(recovered.erin["refused"]?.intValue ?? 0 >= 2)
        #expect(recovered.erin["held"] == 5)
        #expect(recovered.erin["error"]?.stringValue?.contains(failSync ? "EIO" : "ENOSPC") == true)
        // Held records follow the recovery token, in order; refused ones were never written.
        let idx = tokens.firstIndex(of: recovered)!
        #expect(tokens[(idx + 1)...(idx + 5)].map { $0.erin["i"]?.intValue } == [3, 4, 5, 6, 7])
        #expect(!tokens.contains { $0.erin["i"] == 1 || $0.erin["i"] == 2 })
        let ids = Set(tokens.map(\.tokenId))
        #expect(ids.contains(before.tokenId!) && ids.contains(after.tokenId!))
        #expect(heldAcks.withLock { $0.allSatisfy { ids.contains($0.tokenId!) } })
        _ = try fx.verify().get()
    }

    /// Group commit: records queued while an fdatasync is in flight go out in the next batch
    /// together; submitting never waits for the disk.
    @Test func groupCommitsWhatIsQueuedAndSubmitNeverWaits() async throws {
        let fx = try AuditFixture()
        let disk = DiskSwitch()
        let store = try AuditStore.open(fx.config(hooks: disk.hooks))
        disk.holdSync.store(true, ordering: .releasing)
        let acks = Mutex<[AuditAck]>([])
        store.submit(record(0)) { a in acks.withLock { $0.append(a) } }
        #expect(await eventually { disk.syncsHeld.load(ordering: .acquiring) == 1 })
        // The writer is stuck in fdatasync; these submissions return regardless.
        for i in 1...200 { store.submit(record(i, i % 10 == 0 ? .gating : .reporting)) { a in acks.withLock { $0.append(a) } } }
        #expect(acks.withLock { $0.isEmpty })
        disk.holdSync.store(false, ordering: .releasing)
        #expect(await eventually { acks.withLock { $0.count } == 201 })
        store.close()
        #expect(acks.withLock { $0.allSatisfy(\.isDurable) })
        #expect(store.stats.largestBatch == 200)
        // Acknowledged in submission order.
        let ids = acks.withLock { $0.map { TestIDs.number($0.tokenId!) } }
        #expect(ids == ids.sorted())
    }

    /// A hung disk (fdatasync that does not return) turns health to 0 after `stallMs`, and
    /// back when the call returns; the stall is audited. A full queue refuses at once.
    @Test func hungDiskIsUnhealthyAndAFullQueueRefuses() async throws {
        let fx = try AuditFixture()
        let disk = DiskSwitch()
        let store = try AuditStore.open(fx.config(stallMs: 100, maxQueued: 5, hooks: disk.hooks))
        #expect(store.isHealthy)
        disk.holdSync.store(true, ordering: .releasing)
        let acks = Mutex<[AuditAck]>([])
        store.submit(record(0, .gating)) { a in acks.withLock { $0.append(a) } }
        #expect(await eventually { disk.syncsHeld.load(ordering: .acquiring) == 1 })
        #expect(await eventually { !store.isHealthy })
        #expect(acks.withLock { $0.isEmpty })
        for i in 1...5 { store.submit(record(i)) { a in acks.withLock { $0.append(a) } } }
        let refused = await store.submitAndWait(record(6, .gating))
        #expect(refused.error?.kind == .overflow)
        disk.holdSync.store(false, ordering: .releasing)
        #expect(await eventually { store.isHealthy && acks.withLock { $0.count } == 6 })
        #expect(acks.withLock { $0.allSatisfy(\.isDurable) })
        store.close()
        let stats = store.stats
        #expect(stats.stalls >= 1 && stats.longestStallNs >= 100_000_000)  // a loaded disk may add more
        let reports = try fx.tokens().filter { $0.action == .auditRecovered }
        #expect(reports.contains { ($0.erin["stalled_ms"]?.intValue ?? 0) >= 100 })
        #expect(reports.contains { $0.erin["refused_queue_full"] == 1 })
        _ = try fx.verify().get()
    }

    /// Backpressure bounds the queue's memory: more than `backlogHigh` records waiting (here
    /// behind a held fdatasync, so nothing depends on timing) turn health to 0, which blocks
    /// every permit with AUDIT; health returns once the backlog has drained, no record is lost,
    /// and the episode is counted and audited.
    @Test func backlogOverItsBoundIsUnhealthyUntilDrained() async throws {
        let fx = try AuditFixture()
        let disk = DiskSwitch()
        let store = try AuditStore.open(fx.config(stallMs: 600_000, backlogHigh: 8, hooks: disk.hooks))
        disk.holdSync.store(true, ordering: .releasing)
        let acks = Mutex<[AuditAck]>([])
        store.submit(record(0, .gating)) { a in acks.withLock { $0.append(a) } }
        #expect(await eventually { disk.syncsHeld.load(ordering: .acquiring) == 1 })
        for i in 1..<8 { store.submit(record(i)) { a in acks.withLock { $0.append(a) } } }
        #expect(store.stats.waiting == 8)
        #expect(store.isHealthy)  // at the bound, not over it
        store.submit(record(8, .gating)) { a in acks.withLock { $0.append(a) } }
        #expect(store.stats.waiting == 9)
        #expect(!store.isHealthy)
        #expect(acks.withLock { $0.isEmpty })
        disk.holdSync.store(false, ordering: .releasing)
        #expect(await eventually { acks.withLock { $0.count } == 9 })
        #expect(acks.withLock { $0.allSatisfy(\.isDurable) })
        #expect(await eventually { store.isHealthy })
        #expect(store.stats.waiting == 0)
        store.close()
        let stats = store.stats
        #expect(stats.backlogEpisodes == 1 && stats.backlogPeak >= 9)
        let tokens = try fx.tokens()
        #expect(tokens.filter { $0.action == .permitChanged }.count == 9)
        let reports = tokens.filter { $0.action == .auditRecovered }
        #expect(reports.contains { $0.erin["backlog_episodes"] == 1 && ($0.erin["backlog_peak"]?.intValue ?? 0) >= 9 })
        _ = try fx.verify().get()
    }

    /// The bound leaves room for one evaluation of every intent (four records each), or arming
    /// more intents than the bound would block the very rises it waits for.
    @Test func backlogBoundMakesRoomForEveryIntent() throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(fx.config(backlogHigh: 8))
        #expect(store.backlogHigh == 8)
        store.reserveBacklog(forIntents: 10)
        #expect(store.backlogHigh == 40)
        store.reserveBacklog(forIntents: 1)
        #expect(store.backlogHigh == 8)
        store.close()
    }

    /// What is queued beyond `maxBatch` goes out in slices, in order.
    @Test func largeBacklogIsCommittedInSlicesOfMaxBatch() async throws {
        let fx = try AuditFixture()
        let disk = DiskSwitch()
        let store = try AuditStore.open(fx.config(maxBatch: 10, hooks: disk.hooks))
        disk.holdSync.store(true, ordering: .releasing)
        let acks = Mutex<[AuditAck]>([])
        store.submit(record(0)) { a in acks.withLock { $0.append(a) } }
        #expect(await eventually { disk.syncsHeld.load(ordering: .acquiring) == 1 })
        for i in 1...35 { store.submit(record(i)) { a in acks.withLock { $0.append(a) } } }
        disk.holdSync.store(false, ordering: .releasing)
        #expect(await eventually { acks.withLock { $0.count } == 36 })
        store.close()
        #expect(store.stats.largestBatch == 10)
        #expect(store.stats.batches == 1 + 1 + 4 + 1)  // started, record 0, 10+10+10+5, stopped
        let order = try fx.tokens().compactMap { $0.erin["i"]?.intValue }
        #expect(order == (0...35).map(Int64.init))
    }

    @Test func concurrentSubmittersAllGetTheirTokens() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(fx.config(segmentBytes: 64 << 10))
        let ids = await withTaskGroup(of: [String].self) { group in
            for t in 0..<8 {
                group.addTask {
                    var mine: [String] = []
                    for i in 0..<60 {
                        let ack = await store.submitAndWait(record(t * 1000 + i, i % 2 == 0 ? .gating : .reporting))
                        if let id = ack.tokenId { mine.append(id) }
                    }
                    return mine
                }
            }
            var all: [String] = []
            for await m in group { all += m }
            return all
        }
        store.close()
        #expect(ids.count == 480)
        let tokens = try fx.tokens()
        #expect(Set(ids).isSubset(of: Set(tokens.map(\.tokenId))))
        #expect(try fx.verify().get().tokens == 482)
    }

    @Test func checkpointsComeOnTheTimerWithTheProvidedTable() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(fx.config(checkpointMs: 30), checkpoint: {
            ["permits": ["crane-01": ["move_left": 0, "hoist": 1]], "heartbeat": 7]
        })
        #expect(await eventually { (try? fx.tokens().filter { $0.action == .checkpoint }.count) ?? 0 >= 2 })
        store.close()
        let cp = try #require(try fx.tokens().first { $0.action == .checkpoint })
        #expect(cp.erin["permits"]?["crane-01"]?["hoist"] == 1)
        #expect(cp.erachter["why"]?.stringValue?.contains("checkpoint") == true)
        _ = try fx.verify().get()
    }

    @Test func submitAfterCloseIsRefused() async throws {
        let fx = try AuditFixture()
        let store = try AuditStore.open(fx.config())
        store.close()
        store.close()
        let ack = await store.submitAndWait(record(1, .gating))
        #expect(ack.error?.kind == .closed)
        #expect(!store.isHealthy)
    }

    /// A real full disk: a 256 KiB tmpfs (needs CAP_SYS_ADMIN; skipped where it cannot be
    /// mounted — the RLIMIT_FSIZE end-to-end test covers a real write failure everywhere).
    @Test(.enabled(if: canMountTmpfs))
    func realFullDiskBlocksAndRecovers() async throws {
        let fx = try AuditFixture()
        let mnt = fx.root + "/mnt"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        try #require("size=256k".withCString { mount("tmpfs", mnt, "tmpfs", 0, $0) } == 0)
        defer { umount2(mnt, Int32(MNT_DETACH)) }
        let config = AuditStore.Configuration(directory: mnt + "/audit", keyPath: fx.keyPath, node: "guard-01",
                                              retryIntervalMs: 20)
        let store = try AuditStore.open(config)
        let filler = mnt + "/filler"
        // Fill what is left but a little.
        let fd = open(filler, O_WRONLY | O_CREAT, 0o600)
        let chunk = [UInt8](repeating: 0x55, count: 4096)
        while write(fd, chunk, chunk.count) == chunk.count {}
        close(fd)
        var acked: [String] = []
        var refused = 0
        for i in 0..<2000 where store.isHealthy {
            let ack = await store.submitAndWait(record(i, .gating))
            if let id = ack.tokenId { acked.append(id) } else { refused += 1 }
        }
        #expect(!store.isHealthy)
        #expect(refused >= 1)
        #expect(store.stats.lastError?.contains("ENOSPC") == true)
        try FileManager.default.removeItem(atPath: filler)
        #expect(await eventually { store.isHealthy })
        let after = await store.submitAndWait(record(9999, .gating))
        #expect(after.isDurable)
        store.close()
        let tokens = try AuditDirectory.tokens(config.directory).map(\.token)
        #expect(Set(acked + [after.tokenId!]).isSubset(of: Set(tokens.map(\.tokenId))))
        #expect(tokens.contains { $0.action == .auditRecovered })
        _ = try AuditDirectory.verify(config.directory).get()
    }
}

extension AuditStoreTests {
    /// A directory no new file can be made in (a tmpfs out of inodes): the next segment cannot
    /// be created at rotation. Health goes 0, rises are refused, nothing crashes; when files can
    /// be created again the store rotates, recovers by itself, and the chain verifies across
    /// the segments.
    @Test(.enabled(if: canMountTmpfs))
    func directoryWithoutRoomForASegmentBlocksAndRecovers() async throws {
        let fx = try AuditFixture()
        let mnt = fx.root + "/mnt"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        try #require("size=4m,nr_inodes=16".withCString { mount("tmpfs", mnt, "tmpfs", 0, $0) } == 0)
        defer { umount2(mnt, Int32(MNT_DETACH)) }
        let config = AuditStore.Configuration(directory: mnt + "/audit", keyPath: fx.keyPath, node: "guard-01",
                                              segmentBytes: 4000, retryIntervalMs: 20)
        let store = try AuditStore.open(config)
        // Take every inode left.
        var fillers: [String] = []
        while true {
            let path = mnt + "/filler-\(fillers.count)"
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            if fd < 0 { break }
            close(fd)
            fillers.append(path)
        }
        try #require(errno == ENOSPC && fillers.count < 16)
        var acked: [String] = []
        var refused = 0
        for i in 0..<200 where store.isHealthy {
            let ack = await store.submitAndWait(record(i, .gating))
            if let id = ack.tokenId { acked.append(id) } else { refused += 1 }
        }
        #expect(!store.isHealthy)
        #expect(refused >= 1)
        #expect(store.stats.lastError?.contains("tibet-2.jsonl") == true, "\(store.stats.lastError ?? "")")
        #expect(store.stats.lastError?.contains("ENOSPC") == true)
        let whileFailing = await store.submitAndWait(record(1000, .gating))
        #expect(whileFailing.error?.kind == .unhealthy)
        for f in fillers { unlink(f) }
        #expect(await eventually { store.isHealthy })
        let after = await store.submitAndWait(record(9999, .gating))
        #expect(after.isDurable)
        store.close()
        let tokens = try AuditDirectory.tokens(config.directory).map(\.token)
        #expect(Set(acked + [after.tokenId!]).isSubset(of: Set(tokens.map(\.tokenId))))
        #expect(tokens.contains { $0.action == .auditRecovered })
        let summary = try AuditDirectory.verify(config.directory).get()
        #expect(summary.segments >= 2)
    }
}

/// Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN); probed once.
let canMountTmpfs: Bool = {
    guard getuid() == 0 else { return false }
    var template = Array("/tmp/tibet-mnt-probe-XXXXXX".utf8CString)
    guard let p = mkdtemp(&template) else { return false }
    let dir = String(cString: p)
    defer { rmdir(dir) }
    guard "size=16k".withCString({ mount("tmpfs", dir, "tmpfs", 0, $0) }) == 0 else { return false }
    umount2(dir, Int32(MNT_DETACH))
    return true
}()

enum TestIDs {
    static func number(_ id: String) -> Int { Int(id.split(separator: "-").last!)! }
}

func failure(_ r: AuditDirectory.Verdict) -> ChainVerifier.Failure? {
    if case .failure(let f) = r { return f }
    return nil
}
