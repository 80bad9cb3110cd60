#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import Logging
import Synchronization
import TibetTwin
import Platform

/// One thing to put on the record (docs/audit.md). The store adds the token id, the links, the
/// content hash, the signature, the actor and the circumstances (EROMHEEN: node, host,
/// version, wall and monotonic time of `time`).
package struct AuditRecord: Sendable {
    /// Whether the event waits for its token or has already happened.
    package enum Timing: Sendable, Hashable {
        /// The caller holds an effect back until this token is durable (a permit rise). If the
        /// store cannot make it durable now, the acknowledgement says so at once and the token
        /// is never written: the effect must not happen.
        case gating
        /// The effect already happened (a drop, a refused write or client, a start): the token
        /// must follow. While the store fails it is held in memory and written on recovery.
        case reporting
    }

    package var action: TokenAction
    package var erin: JSONValue
    package var eraan: JSONValue
    package var erachter: JSONValue
    /// Extra EROMHEEN members, merged over the store's own (node, host, version, wall_time,
    /// monotonic_ns).
    package var eromheen: [String: JSONValue]
    /// When the event happened; the token's `timestamp` is its wall time.
    package var time: ClockReading
    package var timing: Timing

    package init(action: TokenAction, erin: JSONValue = [:], eraan: JSONValue = [:], erachter: JSONValue = [:],
                eromheen: [String: JSONValue] = [:], time: ClockReading, timing: Timing = .reporting) {
        self.action = action
        self.erin = erin
        self.eraan = eraan
        self.erachter = erachter
        self.eromheen = eromheen
        self.time = time
        self.timing = timing
    }
}

/// The store's answer to one submitted record: durable (with its token id and hash) or not.
package struct AuditAck: Sendable, Hashable {
    /// The token's id once durable.
    package var tokenId: String?
    package var contentHash: String?
    /// Why the record is not durable.
    package var error: AuditError?
    package var isDurable: Bool { error == nil }

    package init(tokenId: String? = nil, contentHash: String? = nil, error: AuditError? = nil) {
        self.tokenId = tokenId
        self.contentHash = contentHash
        self.error = error
    }
}

/// Test and benchmark hooks into the store's disk I/O: called on the writer thread before each
/// segment write and fdatasync. Return an errno to make that call fail as if the system had
/// returned it, or nil to go on (a hook may also sleep, to simulate a slow disk).
package struct AuditIOHooks: Sendable {
    package var beforeWrite: (@Sendable (_ path: String, _ bytes: Int) -> Int32?)?
    package var beforeSync: (@Sendable (_ path: String) -> Int32?)?
    /// Told of every segment file operation that succeeded, in order, on the thread that made
    /// it, before anything else happens (in particular before the acknowledgements of a batch):
    /// the crash-point tests rebuild from it what a power loss at any moment would leave.
    package var observe: (@Sendable (AuditIOEvent) -> Void)?

    package init(beforeWrite: (@Sendable (String, Int) -> Int32?)? = nil,
                beforeSync: (@Sendable (String) -> Int32?)? = nil,
                observe: (@Sendable (AuditIOEvent) -> Void)? = nil) {
        self.beforeWrite = beforeWrite
        self.beforeSync = beforeSync
        self.observe = observe
    }
}

/// A segment file operation that succeeded (`AuditIOHooks.observe`).
package enum AuditIOEvent: Sendable, Hashable {
    /// A segment file was created; its directory entry is durable only after the next `directorySynced`.
    case created(path: String)
    /// `bytes` were appended to a segment (not yet durable).
    case wrote(path: String, bytes: Int)
    /// `fdatasync` of a segment returned: everything written to it so far is durable.
    case synced(path: String)
    /// The directory was fsynced: the entries of the files created in it so far are durable.
    case directorySynced(path: String)
    /// A segment was cut back to `size` bytes (a failed batch taken away).
    case truncated(path: String, size: Int)
}

/// Counters for metrics and status, a snapshot.
package struct AuditStats: Sendable, Hashable {
    package var healthy = true
    package var tokensWritten: UInt64 = 0
    /// Group commits (one write and one fdatasync each).
    package var batches: UInt64 = 0
    package var largestBatch = 0
    package var lastSyncNs: Int64 = 0
    package var maxSyncNs: Int64 = 0
    package var totalSyncNs: Int64 = 0
    /// Failed write/fdatasync attempts (first failures and failed retries).
    package var failures: UInt64 = 0
    /// Recoveries after a failure.
    package var recoveries: UInt64 = 0
    /// Old segments removed by `audit.retain`.
    package var segmentsRemoved = 0
    /// Gating records refused because the store could not write.
    package var refused: UInt64 = 0
    /// Reporting records held in memory, waiting for the store to write again.
    package var held = 0
    /// Held records dropped because more than `maxHeld` were waiting.
    package var lost: UInt64 = 0
    /// Times more than `backlogHigh` records waited (health was 0 until the backlog drained),
    /// and the most that waited.
    package var backlogEpisodes: UInt64 = 0
    package var backlogPeak = 0
    /// Records submitted and not yet committed, refused or held, now.
    package var waiting = 0
    /// Writes or fdatasyncs that took longer than `stallMs`, and the longest.
    package var stalls: UInt64 = 0
    package var longestStallNs: Int64 = 0
    package var lastError: String?
    /// How long the write or fdatasync in progress has been running; 0 when idle.
    package var busyNs: Int64 = 0
    /// The chain head: the last durable token.
    package var headId: String?
    package var headHash: String?
    package var segment = ""
}

/// The TIBET audit chain on disk (docs/audit.md, docs/architecture.md#the-audit-writer): one writer thread owns the
/// segment files `<dir>/tibet-<n>.jsonl`, the chain head and the signing key. Records are
/// queued by any thread without waiting; the writer takes whatever is queued, chains and signs
/// it, writes it in one `write`, `fdatasync`s, and then acknowledges every record of the batch
/// (group commit). Segments rotate by size; a new segment's first token links to the last one
/// of the previous segment.
///
/// Fail-closed: when a write or fdatasync fails, `isHealthy` turns false (the guard loop reads
/// it without locks and blocks with `AUDIT`), gating records are refused at once, reporting
/// records are held, and the writer retries every `retryIntervalMs`; the first successful
/// retry writes an `audit_recovered` token, then the held records, and health returns. A
/// partial write is truncated away before anything else is written, so an acknowledged token
/// is never lost and never followed by garbage.
///
/// On open the tail of the last segment is checked (its last 1024 lines): a torn last line (no newline: a write cut
/// short by a crash or power loss) is moved aside into `tibet-<n>.jsonl.<offset>.torn` and the
/// chain continues from the last whole token; a tail that does not verify (hash, link, or the
/// last token's signature) is never appended to: a new chain starts in a new segment and its
/// `started` token says why. Either way the `started` token announces the signing key
/// (`erin.public_key`) and records the repair. A lock file (`.lock`, flock) keeps a second
/// process out of the directory.
///
/// Checkpoints: give `open` a `checkpoint` closure and a `checkpointIntervalMs`; the writer
/// calls it on its own thread every interval and writes its JSON as the ERIN of a `checkpoint`
/// token (the appliance returns the published permit table; the closure must not block).
package final class AuditStore: Sendable {
    /// Where and how the chain is kept.
    package struct Configuration: Sendable {
        /// `audit.dir`; created (mode 0750) if missing.
        package var directory: String
        /// `audit.key`: the Ed25519 private key in `KeyText` form, refused unless mode is 0600 or
        /// stricter (no group or other bits).
        package var keyPath: String
        /// This appliance's name: `actor` is `jis:<node>`, token ids are `<node>-<n>`.
        package var node: String
        package var host: String
        package var version: String
        /// A segment is closed and the next one started once it reaches this size
        /// (`audit.segment_bytes`, default 64 MiB).
        package var segmentBytes: Int
        /// At most this many records per group commit.
        package var maxBatch: Int
        /// How often a failing store tries again.
        package var retryIntervalMs: Int
        /// `audit.checkpoint_s` in ms; nil: no checkpoints from the store.
        package var checkpointIntervalMs: Int?
        /// At most this many reporting records are held while the store fails; beyond it the
        /// oldest are dropped (counted in `lost` and in the `audit_recovered` token).
        package var maxHeld: Int
        /// A write + fdatasync that has not returned after this long counts as a failure for
        /// `isHealthy` (a hung disk must block rises with AUDIT, not leave them waiting); health
        /// returns when the call does, and the stall is audited.
        package var stallMs: Int
        /// At most this many records wait in the queue; beyond it `submit` refuses at once
        /// (counted, and audited when the store catches up).
        package var maxQueued: Int
        /// Backpressure: while more than this many submitted records wait for the disk,
        /// `isHealthy` is false (the guard blocks every permit with `AUDIT`, so no new rise
        /// adds to the backlog) until at most `backlogHigh / 4` wait. This bounds the memory the
        /// queue takes when the writer falls behind (a starved CPU, a slow disk); the episode is
        /// counted and audited.
        package var backlogHigh: Int
        /// Test and benchmark hooks; nil in production.
        package var hooks: AuditIOHooks?
        /// `audit.retain.max_bytes`: at a rotation, whole old segments are removed (oldest
        /// first) while the segments exceed this; nil: no bound by size.
        package var retainMaxBytes: Int?
        /// `audit.retain.max_age_days`: at a rotation, old segments whose last token is older
        /// than this are removed; nil: no bound by age.
        package var retainMaxAgeDays: Int?

        package init(directory: String, keyPath: String, node: String, host: String? = nil,
                    version: String = ApplianceInfo.version, segmentBytes: Int = 64 << 20, maxBatch: Int = 4096,
                    retryIntervalMs: Int = 500, checkpointIntervalMs: Int? = nil, maxHeld: Int = 10_000,
                    stallMs: Int = 2000, maxQueued: Int = 100_000, backlogHigh: Int = 2048, hooks: AuditIOHooks? = nil,
                    retainMaxBytes: Int? = nil, retainMaxAgeDays: Int? = nil) {
            self.retainMaxBytes = retainMaxBytes
            self.retainMaxAgeDays = retainMaxAgeDays
            self.directory = directory
            self.keyPath = keyPath
            self.node = node
            self.host = host ?? AuditFS.hostName()
            self.version = version
            self.segmentBytes = segmentBytes
            self.maxBatch = maxBatch
            self.retryIntervalMs = retryIntervalMs
            self.checkpointIntervalMs = checkpointIntervalMs
            self.maxHeld = maxHeld
            self.stallMs = stallMs
            self.maxQueued = maxQueued
            self.backlogHigh = max(1, backlogHigh)
            self.hooks = hooks
        }
    }

    private let queue: WaitQueue<AuditPending>
    private let maxQueued: Int
    private let baseBacklogHigh: Int
    private let shared: AuditShared
    private let exited: WaitQueue<Int>
    private let publicKeyRaw: [UInt8]
    /// The key that signs this store's tokens.
    package var publicKey: Curve25519.Signing.PublicKey {
        // Built from 32 bytes the store made itself from a valid key: cannot fail.
        try! Curve25519.Signing.PublicKey(rawRepresentation: publicKeyRaw)
    }
    /// `KeyText.fingerprint(of: publicKey)`.
    package let keyFingerprint: String
    package let directory: String

    private init(queue: WaitQueue<AuditPending>, maxQueued: Int, shared: AuditShared, exited: WaitQueue<Int>,
                 publicKey: Curve25519.Signing.PublicKey, directory: String) {
        self.queue = queue
        self.maxQueued = maxQueued
        self.baseBacklogHigh = shared.backlogHigh
        self.shared = shared
        self.exited = exited
        self.publicKeyRaw = Array(publicKey.rawRepresentation)
        self.keyFingerprint = KeyText.fingerprint(of: publicKey)
        self.directory = directory
    }

    deinit {
        // Without close() the writer would wait forever; let it finish its queue and exit.
        queue.close()
    }

    /// Opens (creating if needed) the audit directory, repairs its tail, writes and syncs the
    /// `started` token, and starts the writer thread. Blocking (disk reads and one fdatasync):
    /// call it at start-up, not from an event loop. Throws if the key is missing or too open,
    /// the directory cannot be used or locked, or the `started` token cannot be made durable.
    package static func open(_ config: Configuration, checkpoint: (@Sendable () -> JSONValue)? = nil,
                            onHealthChange: (@Sendable (Bool) -> Void)? = nil,
                            time: any TimeSource = SystemTimeSource(),
                            logger: Logger = Logger(label: "tibet-twin.audit")) throws(AuditError) -> AuditStore {
        let key = try loadSigningKey(config.keyPath)
        try AuditFS.makeDirectory(config.directory)
        let lockPath = AuditFS.join(config.directory, ".lock")
        let lockFd = try AuditFS.open(lockPath, O_RDWR | O_CREAT, mode: 0o640, kind: .directory)
        // A predecessor that is still closing (or a child forked by any thread of this process
        // that has not reached exec yet, holding a copy of the descriptor) may hold the lock
        // for a moment: wait up to 2 s before calling the directory taken.
        let lockDeadline = monotonicNowNs() + 2_000_000_000
        while true {
            let e: Int32
            do { _ = try SystemCall.retrying { flock(lockFd, LOCK_EX | LOCK_NB) }; break } catch { e = error.rawValue }
            if e == EWOULDBLOCK && monotonicNowNs() < lockDeadline {
                usleep(10_000)
                continue
            }
            Glibc.close(lockFd)
            throw AuditError(e == EWOULDBLOCK ? .locked : .directory, function: "flock", errno: e, path: lockPath,
                             detail: e == EWOULDBLOCK ? "another tibet-twin process writes this audit directory" : "")
        }
        let shared = AuditShared(stallMs: config.stallMs, backlogHigh: config.backlogHigh)
        let writer: AuditWriter
        do {
            writer = try AuditWriter(config: config, key: key, lockFd: lockFd, shared: shared, time: time,
                                     checkpoint: checkpoint, onHealthChange: onHealthChange, logger: logger)
        } catch {
            Glibc.close(lockFd)
            throw error
        }
        let queue = WaitQueue<AuditPending>()
        let exited = WaitQueue<Int>()
        writer.queue = queue
        let box = UncheckedSendableBox(writer)
        let thread = Thread {
            box.value.run()
            exited.push(0)
        }
        thread.name = "tibet-twin-audit"
        thread.start()
        return AuditStore(queue: queue, maxQueued: config.maxQueued, shared: shared, exited: exited, publicKey: key.publicKey,
                          directory: config.directory)
    }

    /// Queues a record and returns at once (one lock held for an append: a drop is never
    /// delayed by the disk). `onDurable` is called once, on the writer thread, after the
    /// record's token is durable — or with an error: at once for a gating record the store
    /// cannot write now, later for a reporting record it could not keep. It must not block.
    /// After `close()`, `onDurable` is called at once with a `.closed` error.
    package func submit(_ record: AuditRecord, onDurable: (@Sendable (AuditAck) -> Void)? = nil) {
        switch queue.push(AuditPending(record: record, onDurable: onDurable), limit: maxQueued) {
        case .queued:
            let waiting = shared.outstanding.add(1, ordering: .acquiringAndReleasing).newValue
            if waiting > shared.backlogHigh { shared.backlogged.store(true, ordering: .releasing) }
        case .closed:
            onDurable?(AuditAck(error: AuditError(.closed, function: "submit", path: directory,
                                                  detail: "the audit store is closed")))
        case .full:
            shared.refusedFull.add(1, ordering: .relaxed)
            onDurable?(AuditAck(error: AuditError(.overflow, function: "submit", path: directory,
                                                  detail: "more than \(maxQueued) records wait for the disk")))
        }
    }

    /// Submits a record and waits (suspending, not blocking a thread) for its acknowledgement.
    package func submitAndWait(_ record: AuditRecord) async -> AuditAck {
        await withCheckedContinuation { (c: CheckedContinuation<AuditAck, Never>) in
            submit(record) { c.resume(returning: $0) }
        }
    }

    /// Raises the backlog bound to at least four records per permit intent, so that one
    /// evaluation of every intent (a rise or a drop each, e.g. arming at start) always fits
    /// below it: otherwise the bound would block the very rises it waits for, forever. Call
    /// at start and after a reload that changed the maps.
    package func reserveBacklog(forIntents intents: Int) {
        let want = max(baseBacklogHigh, 4 * intents)
        shared.backlogHighNow.store(want, ordering: .relaxed)
    }

    /// The backlog bound now (`Configuration.backlogHigh`, raised by `reserveBacklog`).
    package var backlogHigh: Int { shared.backlogHigh }

    /// Whether the store writes: false from the first failed write or fdatasync until a retry
    /// succeeds, and while a write or fdatasync has hung for more than `stallMs`. Lock-free;
    /// the guard loop reads it every evaluation (docs/decision-rule.md, check 10).
    package var isHealthy: Bool {
        guard shared.healthy.load(ordering: .acquiring), !shared.backlogged.load(ordering: .acquiring) else { return false }
        let busy = shared.busySinceNs.load(ordering: .acquiring)
        return busy == 0 || monotonicNowNs() - busy <= shared.stallNs
    }

    /// A snapshot of the counters and the chain head.
    package var stats: AuditStats {
        var s = shared.stats.withLock { $0 }
        s.healthy = isHealthy
        s.waiting = shared.outstanding.load(ordering: .relaxed)
        let busy = shared.busySinceNs.load(ordering: .acquiring)
        s.busyNs = busy == 0 ? 0 : max(monotonicNowNs() - busy, 0)
        return s
    }

    /// Writes everything queued, then a `stopped` token (ERIN `reason`), syncs, closes the
    /// files, releases the directory, and returns when the writer thread has exited. Blocking.
    /// Further submissions are refused with `.closed`.
    package func close(reason: String = "shutdown") {
        shared.stopReason.withLock { $0 = $0 ?? reason }
        queue.close()
        _ = exited.take(max: 1, deadlineNs: nil)
        exited.push(0)  // a second close() returns at once
    }

    static func loadSigningKey(_ path: String) throws(AuditError) -> Curve25519.Signing.PrivateKey {
        var st = stat()
        guard stat(path, &st) == 0 else {
            let e = Errno.current
            throw AuditError(.key, function: "stat", errno: e.rawValue, path: path,
                             detail: "the audit signing key (tibet-twin keygen)" + PathAccess.hint(e, path: path))
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw AuditError(.key, function: "stat", path: path, detail: "the audit signing key is not a regular file")
        }
        let perm = st.st_mode & 0o777
        guard perm & 0o077 == 0 else {
            throw AuditError(.keyPermissions, function: "stat", path: path,
                             detail: "the audit signing key is accessible by group or others (mode 0\(String(perm, radix: 8))): chmod 600 it")
        }
        let bytes = try AuditFS.readAll(path)
        do {
            return try KeyText.privateKey(from: String(decoding: bytes, as: UTF8.self))
        } catch {
            throw AuditError(.key, function: "parse", path: path, detail: "not an Ed25519 private key in tibet-twin key form: \(error)")
        }
    }
}
