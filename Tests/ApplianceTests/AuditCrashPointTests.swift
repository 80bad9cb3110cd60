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

/// Durability beyond SIGKILL (issue 17 B). A SIGKILL leaves the page cache alone, so it only
/// shows that an acknowledgement follows the `write`. These tests record every segment file
/// operation of a real store and every acknowledgement, in the order the writer thread made
/// them, and then rebuild, for every moment in between, the directory a power loss at that
/// moment would leave: each file as of its last completed `fdatasync` (every byte written since
/// then lost), and a file created since the last directory fsync not there at all. On each
/// such directory: every token acknowledged durable before that moment (a permit rise the guard
/// would already have served as 1) must be there, `audit verify` must pass, and the store must
/// open on it, recover, write and verify again. docs/audit.md#crash-safety.
@Suite("Audit crash points")
struct AuditCrashPointTests {
    /// The writer's file operations (with the file's bytes at that moment) and acknowledgements,
    /// in one order.
    final class Recorder: Sendable {
        enum Event: Sendable {
            case created(String)
            case directorySynced
            /// The file's whole content after the operation.
            case wrote(String, [UInt8])
            case truncated(String, [UInt8])
            case synced(String, [UInt8])
            case acked(tokenId: String, gating: Bool)
        }

        let events = Mutex<[Event]>([])

        var hooks: AuditIOHooks {
            AuditIOHooks(observe: { e in
                let event: Event
                switch e {
                case .created(let p): event = .created(Self.name(p))
                case .directorySynced: event = .directorySynced
                case .wrote(let p, _): event = .wrote(Self.name(p), Self.read(p))
                case .truncated(let p, _): event = .truncated(Self.name(p), Self.read(p))
                case .synced(let p): event = .synced(Self.name(p), Self.read(p))
                }
                self.events.withLock { $0.append(event) }
            })
        }

        func acked(_ ack: AuditAck, gating: Bool) {
            guard ack.isDurable, let id = ack.tokenId else { return }
            events.withLock { $0.append(.acked(tokenId: id, gating: gating)) }
        }

        static func name(_ path: String) -> String { String(path.split(separator: "/").last ?? "") }

        static func read(_ path: String) -> [UInt8] {
            (try? Data(contentsOf: URL(fileURLWithPath: path))).map { [UInt8]($0) } ?? []
        }
    }

    /// What a power loss right after the first `k` events leaves on disk.
    struct CrashState {
        /// File name → bytes, for the files whose directory entry was durable.
        var files: [String: [UInt8]] = [:]
        /// The same, plus half of the bytes written after the last fdatasync of the newest
        /// segment (a write cut short: the torn tail recovery must handle).
        var tornFiles: [String: [UInt8]] = [:]
        /// Tokens acknowledged durable by then, and which of them were gating (rises).
        var acked: [String] = []
        var ackedGating = 0

        init(_ events: ArraySlice<Recorder.Event>) {
            var entryDurable: [String: Bool] = [:]
            var durable: [String: [UInt8]] = [:]
            var current: [String: [UInt8]] = [:]
            var lastWritten: String?
            for e in events {
                switch e {
                case .created(let n):
                    entryDurable[n] = false
                    durable[n] = []
                    current[n] = []
                case .directorySynced:
                    for n in entryDurable.keys { entryDurable[n] = true }
                case .wrote(let n, let c):
                    current[n] = c
                    lastWritten = n
                case .truncated(let n, let c):
                    current[n] = c
                case .synced(let n, let c):
                    durable[n] = c
                    current[n] = c
                case .acked(let id, let gating):
                    acked.append(id)
                    if gating { ackedGating += 1 }
                }
            }
            for (n, present) in entryDurable where present { files[n] = durable[n] ?? [] }
            tornFiles = files
            if let n = lastWritten, let d = files[n], let c = current[n], c.count > d.count, c.starts(with: d) {
                tornFiles[n] = d + c[d.count..<(d.count + (c.count - d.count + 1) / 2)]
            }
        }
    }

    static func materialise(_ files: [String: [UInt8]], in dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (n, bytes) in files { try Data(bytes).write(to: URL(fileURLWithPath: dir + "/" + n)) }
    }

    /// Token ids of the segments in `dir` that parse (verification is separate).
    static func tokenIds(_ dir: String) throws -> Set<String> {
        guard !(try AuditFS.segmentNumbers(in: dir)).isEmpty else { return [] }
        return Set(try AuditDirectory.tokens(dir).map(\.token.tokenId))
    }

    @Test func noAcknowledgedTokenIsLostAtAnyCrashPoint() async throws {
        let fx = try AuditFixture()
        let recorder = Recorder()
        // Small segments: several rotations, each a created file and a directory fsync.
        let store = try AuditStore.open(fx.config(segmentBytes: 2048, hooks: recorder.hooks))
        // Rises (gating) one at a time, as the guard waits for each, and bursts that share a batch.
        var i = 0
        for round in 0..<12 {
            let burst = round % 3 == 2 ? 4 : 1
            let last = Mutex<[AuditAck]>([])
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                for b in 0..<burst {
                    let gating = (i + b) % 2 == 0
                    store.submit(record(i + b, gating ? .gating : .reporting)) { ack in
                        recorder.acked(ack, gating: gating)
                        let n = last.withLock { $0.append(ack); return $0.count }
                        if n == burst { done.resume() }
                    }
                }
            }
            #expect(last.withLock { $0.allSatisfy(\.isDurable) })
            i += burst
        }
        store.close(reason: "test over")
        let events = recorder.events.withLock { $0 }
        let syncs = events.filter { if case .synced = $0 { return true } else { return false } }.count
        let rotations = events.filter { if case .created = $0 { return true } else { return false } }.count
        #expect(syncs >= 10 && rotations >= 3, "syncs \(syncs), segments created \(rotations)")

        let pinned = [fx.key.publicKey]
        var gatingChecked = 0
        var tornChecked = 0
        for k in 0...events.count {
            let crash = CrashState(events.prefix(k))
            gatingChecked = max(gatingChecked, crash.ackedGating)
            for (variant, files) in [("lost", crash.files), ("torn", crash.tornFiles)] {
                let dir = "\(fx.root)/crash-\(k)-\(variant)"
                try Self.materialise(files, in: dir)
                let where_ = "crash after event \(k) of \(events.count) (\(variant))"
                // Every acknowledged token survived the power loss.
                let ids = try Self.tokenIds(dir)
                let lost = crash.acked.filter { !ids.contains($0) }
                #expect(lost.isEmpty, "\(where_): acknowledged and lost: \(lost)")
                // `audit verify` on the directory as the power loss left it.
                // A cut-short write is reported as `torn` (until the store moves it aside); one
                // cut at a line end just kept more than was synced, and verifies.
                let cutMidLine = files.contains { n, b in b.last != nil && b.last != 0x0A && crash.files[n] != b }
                if !ids.isEmpty, !cutMidLine {
                    let verdict = try AuditDirectory.verify(dir, pinnedKeys: pinned)
                    if case .failure(let f) = verdict { Issue.record("\(where_): audit verify: \(f)") }
                } else if cutMidLine {
                    tornChecked += 1
                    let verdict = try AuditDirectory.verify(dir, pinnedKeys: pinned)
                    if case .failure(let f) = verdict { #expect(f.kind == .torn, "\(where_): \(f)") } else {
                        Issue.record("\(where_): a torn tail verified")
                    }
                }
                // The store recovers on it, writes, and the result verifies.
                var config = fx.config()
                config.directory = dir
                let reopened = try AuditStore.open(config)
                let ack = await reopened.submitAndWait(record(1000, .gating))
                #expect(ack.isDurable, "\(where_): \(ack)")
                reopened.close(reason: "after crash")
                let after = try AuditDirectory.verify(dir, pinnedKeys: pinned)
                if case .failure(let f) = after { Issue.record("\(where_): audit verify after recovery: \(f)") }
                let kept = try Self.tokenIds(dir)
                #expect(crash.acked.allSatisfy { kept.contains($0) }, "\(where_): recovery lost an acknowledged token")
                try? FileManager.default.removeItem(atPath: dir)
            }
        }
        #expect(gatingChecked >= 10)
        #expect(tornChecked >= 10)
    }

    /// The model itself: unsynced bytes and an entry without a directory fsync are lost, so a
    /// writer that acknowledged before its fdatasync or skipped the directory fsync would fail
    /// the test above.
    @Test func theCrashModelLosesWhatWasNotSynced() {
        typealias E = Recorder.Event
        let a = Array("a\n".utf8), ab = Array("a\nb\n".utf8)
        let events: [E] = [.created("tibet-1.jsonl"), .directorySynced, .wrote("tibet-1.jsonl", a), .synced("tibet-1.jsonl", a),
                           .acked(tokenId: "t1", gating: true), .wrote("tibet-1.jsonl", ab), .created("tibet-2.jsonl"),
                           .wrote("tibet-2.jsonl", a), .synced("tibet-2.jsonl", a)]
        let s = CrashState(events[...])
        #expect(s.files == ["tibet-1.jsonl": a])  // "b" never synced; tibet-2's entry never synced
        #expect(s.acked == ["t1"] && s.ackedGating == 1)
        #expect(CrashState(events.prefix(3)).files == ["tibet-1.jsonl": []])
        #expect(CrashState(events.prefix(1)).files.isEmpty)
        let torn = CrashState(events.prefix(6)).tornFiles["tibet-1.jsonl"]
        #expect(torn.map { $0.count > a.count && $0.count < ab.count } == true)
    }
}
