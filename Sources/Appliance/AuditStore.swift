#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import Logging
import Synchronization
import TibetTwin

/// One thing to put on the record (docs/audit.md). The store adds the token id, the links, the
/// content hash, the signature, the actor and the circumstances (EROMHEEN: node, host,
/// version, wall and monotonic time of `time`).
public struct AuditRecord: Sendable {
    /// Whether the event waits for its token or has already happened.
    public enum Timing: Sendable, Hashable {
        /// The caller holds an effect back until this token is durable (a permit rise). If the
        /// store cannot make it durable now, the acknowledgement says so at once and the token
        /// is never written: the effect must not happen.
        case gating
        /// The effect already happened (a drop, a refused write or client, a start): the token
        /// must follow. While the store fails it is held in memory and written on recovery.
        case reporting
    }

    public var action: TokenAction
    public var erin: JSONValue
    public var eraan: JSONValue
    public var erachter: JSONValue
    /// Extra EROMHEEN members, merged over the store's own (node, host, version, wall_time,
    /// monotonic_ns).
    public var eromheen: [String: JSONValue]
    /// When the event happened; the token's `timestamp` is its wall time.
    public var time: ClockReading
    public var timing: Timing

    public init(action: TokenAction, erin: JSONValue = [:], eraan: JSONValue = [:], erachter: JSONValue = [:],
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
public struct AuditAck: Sendable, Hashable {
    /// The token's id once durable.
    public var tokenId: String?
    public var contentHash: String?
    /// Why the record is not durable.
    public var error: AuditError?
    public var isDurable: Bool { error == nil }
}

/// Test and benchmark hooks into the store's disk I/O: called on the writer thread before each
/// segment write and fdatasync. Return an errno to make that call fail as if the system had
/// returned it, or nil to go on (a hook may also sleep, to simulate a slow disk).
public struct AuditIOHooks: Sendable {
    public var beforeWrite: (@Sendable (_ path: String, _ bytes: Int) -> Int32?)?
    public var beforeSync: (@Sendable (_ path: String) -> Int32?)?

    public init(beforeWrite: (@Sendable (String, Int) -> Int32?)? = nil,
                beforeSync: (@Sendable (String) -> Int32?)? = nil) {
        self.beforeWrite = beforeWrite
        self.beforeSync = beforeSync
    }
}

/// Counters for metrics and status, a snapshot.
public struct AuditStats: Sendable, Hashable {
    public var healthy = true
    public var tokensWritten: UInt64 = 0
    /// Group commits (one write and one fdatasync each).
    public var batches: UInt64 = 0
    public var largestBatch = 0
    public var lastSyncNs: Int64 = 0
    public var maxSyncNs: Int64 = 0
    public var totalSyncNs: Int64 = 0
    /// Failed write/fdatasync attempts (first failures and failed retries).
    public var failures: UInt64 = 0
    /// Recoveries after a failure.
    public var recoveries: UInt64 = 0
    /// Gating records refused because the store could not write.
    public var refused: UInt64 = 0
    /// Reporting records held in memory, waiting for the store to write again.
    public var held = 0
    /// Held records dropped because more than `maxHeld` were waiting.
    public var lost: UInt64 = 0
    /// Times more than `backlogHigh` records waited (health was 0 until the backlog drained),
    /// and the most that waited.
    public var backlogEpisodes: UInt64 = 0
    public var backlogPeak = 0
    /// Records submitted and not yet committed, refused or held, now.
    public var waiting = 0
    /// Writes or fdatasyncs that took longer than `stallMs`, and the longest.
    public var stalls: UInt64 = 0
    public var longestStallNs: Int64 = 0
    public var lastError: String?
    /// The chain head: the last durable token.
    public var headId: String?
    public var headHash: String?
    public var segment = ""
}

/// The TIBET audit chain on disk (docs/audit.md, DESIGN "audit writer"): one writer thread owns the
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
public final class AuditStore: Sendable {
    /// Where and how the chain is kept.
    public struct Configuration: Sendable {
        /// `audit.dir`; created (mode 0750) if missing.
        public var directory: String
        /// `audit.key`: the Ed25519 private key in `KeyText` form, refused unless mode is 0600 or
        /// stricter (no group or other bits).
        public var keyPath: String
        /// This appliance's name: `actor` is `jis:<node>`, token ids are `<node>-<n>`.
        public var node: String
        public var host: String
        public var version: String
        /// A segment is closed and the next one started once it reaches this size
        /// (`audit.segment_bytes`, default 64 MiB).
        public var segmentBytes: Int
        /// At most this many records per group commit.
        public var maxBatch: Int
        /// How often a failing store tries again.
        public var retryIntervalMs: Int
        /// `audit.checkpoint_s` in ms; nil: no checkpoints from the store.
        public var checkpointIntervalMs: Int?
        /// At most this many reporting records are held while the store fails; beyond it the
        /// oldest are dropped (counted in `lost` and in the `audit_recovered` token).
        public var maxHeld: Int
        /// A write + fdatasync that has not returned after this long counts as a failure for
        /// `isHealthy` (a hung disk must block rises with AUDIT, not leave them waiting); health
        /// returns when the call does, and the stall is audited.
        public var stallMs: Int
        /// At most this many records wait in the queue; beyond it `submit` refuses at once
        /// (counted, and audited when the store catches up).
        public var maxQueued: Int
        /// Backpressure: while more than this many submitted records wait for the disk,
        /// `isHealthy` is false (the guard blocks every permit with `AUDIT`, so no new rise
        /// adds to the backlog) until at most `backlogHigh / 4` wait. This bounds the memory the
        /// queue takes when the writer falls behind (a starved CPU, a slow disk); the episode is
        /// counted and audited.
        public var backlogHigh: Int
        /// Test and benchmark hooks; nil in production.
        public var hooks: AuditIOHooks?

        public init(directory: String, keyPath: String, node: String, host: String? = nil,
                    version: String = ApplianceInfo.version, segmentBytes: Int = 64 << 20, maxBatch: Int = 4096,
                    retryIntervalMs: Int = 500, checkpointIntervalMs: Int? = nil, maxHeld: Int = 10_000,
                    stallMs: Int = 2000, maxQueued: Int = 100_000, backlogHigh: Int = 2048, hooks: AuditIOHooks? = nil) {
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
    public var publicKey: Curve25519.Signing.PublicKey {
        // Built from 32 bytes the store made itself from a valid key: cannot fail.
        try! Curve25519.Signing.PublicKey(rawRepresentation: publicKeyRaw)
    }
    /// `KeyText.fingerprint(of: publicKey)`.
    public let keyFingerprint: String
    public let directory: String

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
    public static func open(_ config: Configuration, checkpoint: (@Sendable () -> JSONValue)? = nil,
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
        while flock(lockFd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            if e == EINTR { continue }
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
    public func submit(_ record: AuditRecord, onDurable: (@Sendable (AuditAck) -> Void)? = nil) {
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
    public func submitAndWait(_ record: AuditRecord) async -> AuditAck {
        await withCheckedContinuation { (c: CheckedContinuation<AuditAck, Never>) in
            submit(record) { c.resume(returning: $0) }
        }
    }

    /// Raises the backlog bound to at least four records per permit intent, so that one
    /// evaluation of every intent (a rise or a drop each, e.g. arming at start) always fits
    /// below it: otherwise the bound would block the very rises it waits for, forever. Call
    /// at start and after a reload that changed the maps.
    public func reserveBacklog(forIntents intents: Int) {
        let want = max(baseBacklogHigh, 4 * intents)
        shared.backlogHighNow.store(want, ordering: .relaxed)
    }

    /// The backlog bound now (`Configuration.backlogHigh`, raised by `reserveBacklog`).
    public var backlogHigh: Int { shared.backlogHigh }

    /// Whether the store writes: false from the first failed write or fdatasync until a retry
    /// succeeds, and while a write or fdatasync has hung for more than `stallMs`. Lock-free;
    /// the guard loop reads it every evaluation (docs/decision-rule.md, check 10).
    public var isHealthy: Bool {
        guard shared.healthy.load(ordering: .acquiring), !shared.backlogged.load(ordering: .acquiring) else { return false }
        let busy = shared.busySinceNs.load(ordering: .acquiring)
        return busy == 0 || monotonicNowNs() - busy <= shared.stallNs
    }

    /// A snapshot of the counters and the chain head.
    public var stats: AuditStats {
        var s = shared.stats.withLock { $0 }
        s.healthy = isHealthy
        s.waiting = shared.outstanding.load(ordering: .relaxed)
        return s
    }

    /// Writes everything queued, then a `stopped` token (ERIN `reason`), syncs, closes the
    /// files, releases the directory, and returns when the writer thread has exited. Blocking.
    /// Further submissions are refused with `.closed`.
    public func close(reason: String = "shutdown") {
        shared.stopReason.withLock { $0 = $0 ?? reason }
        queue.close()
        _ = exited.take(max: 1, deadlineNs: nil)
        exited.push(0)  // a second close() returns at once
    }

    static func loadSigningKey(_ path: String) throws(AuditError) -> Curve25519.Signing.PrivateKey {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw AuditError(.key, function: "stat", errno: errno, path: path, detail: "the audit signing key (tibet-twin keygen)")
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

/// What the writer thread and the store share: health (lock-free), counters, stop reason.
final class AuditShared: Sendable {
    let healthy = Atomic<Bool>(true)
    /// When the writer entered its current write/fdatasync (CLOCK_MONOTONIC ns), 0 when idle.
    let busySinceNs = Atomic<Int64>(0)
    let stallNs: Int64
    /// Records refused because the queue was full, not yet audited.
    let refusedFull = Atomic<Int>(0)
    /// Records submitted and not yet committed, refused or held (the queue and the writer's
    /// backlog); above `backlogHigh` the store reports itself unhealthy (`backlogged`) until
    /// the writer has brought it down to `backlogHigh / 4`.
    let outstanding = Atomic<Int>(0)
    let backlogged = Atomic<Bool>(false)
    let backlogHighNow: Atomic<Int>
    var backlogHigh: Int { backlogHighNow.load(ordering: .relaxed) }
    let stats = Mutex(AuditStats())
    let stopReason = Mutex<String?>(nil)

    init(stallMs: Int, backlogHigh: Int) {
        stallNs = Int64(stallMs) * 1_000_000
        backlogHighNow = Atomic(backlogHigh)
    }
}

struct AuditPending: Sendable {
    var record: AuditRecord
    var onDurable: (@Sendable (AuditAck) -> Void)?
}

/// Hands a thread-confined object to the thread that will own it.
struct UncheckedSendableBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// The writer thread's state: segment files, chain head, key. Confined to that thread after
/// `AuditStore.open` (which builds it and writes the `started` token before the thread starts).
final class AuditWriter {
    let config: AuditStore.Configuration
    let key: Curve25519.Signing.PrivateKey
    let publicKeyText: String
    let fingerprint: String
    let lockFd: Int32
    let shared: AuditShared
    let time: any TimeSource
    let checkpoint: (@Sendable () -> JSONValue)?
    let onHealthChange: (@Sendable (Bool) -> Void)?
    let logger: Logger
    var queue: WaitQueue<AuditPending>!

    var fd: Int32 = -1
    var segment = 0
    var segmentPath = ""
    /// Bytes of the current segment known durable (everything before is whole, synced lines).
    var size = 0
    /// A failed write left bytes after `size` that could not be truncated yet.
    var needsTruncate = false
    var chain: TokenChain

    var healthy = true
    var failedAtWallNs: Int64 = 0
    var firstError: AuditError?
    var lastError: AuditError?
    var failedAttempts = 0
    var refusedDuringFailure = 0
    var lostDuringFailure = 0
    var held: [AuditPending] = []
    /// Records taken from the queue and not yet committed (from `backlogStart`).
    var backlog: [AuditPending] = []
    var backlogStart = 0
    /// The longest write/fdatasync over `stallMs` not yet audited (0: none).
    var stalledNs: Int64 = 0
    var nextRetryNs: Int64 = 0
    var nextCheckpointNs: Int64?
    /// The most records seen waiting during the current backlog episode (0: none).
    var backlogPeak = 0
    /// Peaks of ended backlog episodes not yet audited.
    var backlogReports: [Int] = []

    init(config: AuditStore.Configuration, key: Curve25519.Signing.PrivateKey, lockFd: Int32, shared: AuditShared,
         time: any TimeSource, checkpoint: (@Sendable () -> JSONValue)?,
         onHealthChange: (@Sendable (Bool) -> Void)?, logger: Logger) throws(AuditError) {
        self.config = config
        self.key = key
        self.publicKeyText = Base64.encode(Array(key.publicKey.rawRepresentation))
        self.fingerprint = KeyText.fingerprint(of: key.publicKey)
        self.lockFd = lockFd
        self.shared = shared
        self.time = time
        self.checkpoint = checkpoint
        self.onHealthChange = onHealthChange
        self.logger = logger
        self.chain = TokenChain(idPrefix: config.node)

        let recovered = try AuditTail.recover(directory: config.directory, node: config.node)
        segment = recovered.segment
        segmentPath = AuditFS.join(config.directory, AuditSegment.name(segment))
        chain = recovered.chain
        fd = try AuditFS.open(segmentPath, O_WRONLY | O_APPEND | O_CREAT, mode: 0o640)
        do throws(AuditError) {
            size = try AuditFS.size(fd, path: segmentPath)
            if recovered.createdSegment { try AuditFS.syncDirectory(config.directory) }
            var erin = recovered.startInfo
            erin["public_key"] = .string(publicKeyText)
            erin["key_id"] = .string(fingerprint)
            erin["segment"] = .string(AuditSegment.name(segment))
            erin["pid"] = .int(Int64(getpid()))
            if let previous = recovered.previousKeyFingerprint, previous != fingerprint {
                erin["previous_key_id"] = .string(previous)
            }
            let why = recovered.startInfo["new_chain"] != nil
                ? "audit store opened: the tail did not verify, so a new chain starts here"
                : "audit store opened: announces the key that signs from here on"
            let started = AuditRecord(action: .started, erin: .object(erin), eraan: ["jis": .string("jis:\(config.node)")],
                                      erachter: ["why": .string(why), "safety_critical": true], time: time.now())
            let tokens = try write([started])
            publishHead(tokens)
            if recovered.startInfo["new_chain"] != nil || recovered.startInfo["repair"] != nil {
                logger.warning("audit chain repaired on open", metadata: ["started": "\(tokens[0].line)"])
            }
        } catch {
            close(fd)
            throw error
        }
        nextCheckpointNs = config.checkpointIntervalMs.map { monotonicNowNs() + Int64($0) * 1_000_000 }
    }

    // MARK: the thread

    func run() {
        while true {
            var deadline = nextCheckpointNs
            if !healthy { deadline = min(deadline ?? .max, nextRetryNs) }
            // Take everything queued at once (a swap under the lock, so submitters never wait
            // on a long copy) and commit it in slices of maxBatch.
            let closed: Bool
            if backlogStart >= backlog.count {
                (backlog, closed) = queue.take(max: .max, deadlineNs: deadline)
                backlogStart = 0
            } else {
                closed = queue.isClosed
            }
            let end = min(backlog.count, backlogStart + config.maxBatch)
            var work = Array(backlog[backlogStart..<end])
            let fromQueue = work.count
            backlogStart = end
            if backlogStart >= backlog.count {
                backlog = []  // free the taken batch now, not at the next take
                backlogStart = 0
            }
            if shared.backlogged.load(ordering: .acquiring) {
                backlogPeak = max(backlogPeak, shared.outstanding.load(ordering: .acquiring))
            }
            let now = monotonicNowNs()
            if let next = nextCheckpointNs, now >= next, let interval = config.checkpointIntervalMs, let cp = checkpoint {
                let erin = cp()
                work.append(AuditPending(record: AuditRecord(
                    action: .checkpoint, erin: erin, eraan: ["jis": .string("jis:\(config.node)")],
                    erachter: ["why": .string("periodic checkpoint every \(interval) ms: the full permit table"),
                               "safety_critical": true],
                    time: time.now()), onDurable: nil))
                var n = next
                while n <= now { n += Int64(interval) * 1_000_000 }
                nextCheckpointNs = n
            }
            if healthy {
                if !work.isEmpty { commit(work) }
                settleBacklog(fromQueue)
                if healthy { reportDegradation() }
            } else {
                for p in work {
                    if p.record.timing == .gating { refuse(p) } else { hold(p) }
                }
                settleBacklog(fromQueue)
                if now >= nextRetryNs { attemptRecovery() }
            }
            if closed && backlogStart >= backlog.count && queue.count == 0 {
                finish()
                return
            }
        }
    }

    func commit(_ work: [AuditPending]) {
        do {
            let tokens = try write(work.map(\.record))
            publishHead(tokens)
            for (p, t) in zip(work, tokens) {
                p.onDurable?(AuditAck(tokenId: t.tokenId, contentHash: t.contentHash))
            }
        } catch {
            enterFailure(error)
            for p in work {
                if p.record.timing == .gating { refuse(p) } else { hold(p) }
            }
        }
    }

    /// Audits a stall (a write or fdatasync slower than `stallMs`, during which `isHealthy` was
    /// false) and records refused because the queue was full, once the store has caught up.
    /// `done` records taken from the queue are committed, refused or held: ends a backlog
    /// episode once at most `backlogHigh / 4` records wait (hysteresis, so health does not
    /// flap at the mark); the next `audit_recovered` token reports it.
    func settleBacklog(_ done: Int) {
        let left = shared.outstanding.subtract(done, ordering: .acquiringAndReleasing).newValue
        guard shared.backlogged.load(ordering: .acquiring), left <= shared.backlogHigh / 4 else { return }
        shared.backlogged.store(false, ordering: .releasing)
        let peak = max(backlogPeak, shared.backlogHigh + 1)
        backlogPeak = 0
        backlogReports.append(peak)
        shared.stats.withLock {
            $0.backlogEpisodes += 1
            $0.backlogPeak = max($0.backlogPeak, peak)
        }
        logger.warning("audit backlog drained: health was 0 meanwhile", metadata: ["peak": "\(peak)", "high": "\(shared.backlogHigh)"])
        // The backlog's memory is free now; give it back to the system instead of keeping
        // the high-water mark resident (glibc keeps freed memory in its arenas).
        MallocTuning.trim()
    }

    func reportDegradation() {
        let full = shared.refusedFull.exchange(0, ordering: .acquiringAndReleasing)
        let backlogs = backlogReports
        guard stalledNs > 0 || full > 0 || !backlogs.isEmpty else { return }
        backlogReports = []
        let stall = stalledNs
        stalledNs = 0
        if stall > 0 {
            shared.stats.withLock {
                $0.stalls += 1
                $0.longestStallNs = max($0.longestStallNs, stall)
            }
            logger.warning("audit disk stalled: health was 0 meanwhile", metadata: ["ms": "\(stall / 1_000_000)"])
        }
        if full > 0 { shared.stats.withLock { $0.lost += UInt64(full) } }
        let now = time.now()
        let record = AuditRecord(
            action: .auditRecovered,
            erin: [
                "recovered_at": .string(RFC3339.format(wallNs: now.wallNs, fractionDigits: 6)),
                "stalled_ms": .int(stall / 1_000_000),
                "refused_queue_full": .int(Int64(full)),
                "backlog_episodes": .int(Int64(backlogs.count)),
                "backlog_peak": .int(Int64(backlogs.max() ?? 0)),
            ],
            eraan: ["jis": .string("jis:\(config.node)")],
            erachter: ["why": .string(stall > 0 ? "a write or fdatasync took \(stall / 1_000_000) ms (over \(config.stallMs) ms): health was 0 meanwhile"
                                      : full > 0 ? "records were refused while more than \(config.maxQueued) waited"
                                      : "more than \(shared.backlogHigh) records waited for the disk: health was 0 until the backlog drained"),
                       "safety_critical": true],
            time: now)
        commit([AuditPending(record: record, onDurable: nil)])
        stalledNs = 0  // this token's own write is not a new stall to report
    }

    func enterFailure(_ error: AuditError) {
        healthy = false
        shared.healthy.store(false, ordering: .releasing)
        failedAtWallNs = time.now().wallNs
        firstError = error
        lastError = error
        failedAttempts = 1
        refusedDuringFailure = 0
        lostDuringFailure = 0
        nextRetryNs = monotonicNowNs() + Int64(config.retryIntervalMs) * 1_000_000
        shared.stats.withLock {
            $0.failures += 1
            $0.lastError = error.description
        }
        logger.error("audit write failed: permits block with AUDIT until it recovers", metadata: ["error": "\(error)"])
        onHealthChange?(false)
    }

    func refuse(_ p: AuditPending) {
        refusedDuringFailure += 1
        shared.stats.withLock { $0.refused += 1 }
        let e = lastError ?? AuditError(.unhealthy, function: "write", path: segmentPath)
        p.onDurable?(AuditAck(error: AuditError(.unhealthy, function: "submit", errno: e.errno, path: config.directory,
                                                detail: "the audit store cannot write since \(RFC3339.format(wallNs: failedAtWallNs)): \(e)")))
    }

    func hold(_ p: AuditPending) {
        if held.count >= config.maxHeld {
            let dropped = held.removeFirst()
            lostDuringFailure += 1
            shared.stats.withLock { $0.lost += 1 }
            dropped.onDurable?(AuditAck(error: AuditError(.overflow, function: "hold", path: config.directory,
                                                          detail: "more than \(config.maxHeld) records held while the store failed")))
        }
        held.append(p)
        shared.stats.withLock { $0.held = held.count }
    }

    func attemptRecovery() {
        let now = time.now()
        let recovered = AuditRecord(
            action: .auditRecovered,
            erin: [
                "failed_at": .string(RFC3339.format(wallNs: failedAtWallNs, fractionDigits: 6)),
                "recovered_at": .string(RFC3339.format(wallNs: now.wallNs, fractionDigits: 6)),
                "error": .string(firstError?.description ?? ""),
                "last_error": .string(lastError?.description ?? ""),
                "attempts": .int(Int64(failedAttempts)),
                "refused": .int(Int64(refusedDuringFailure)),
                "held": .int(Int64(held.count)),
                "lost": .int(Int64(lostDuringFailure)),
            ],
            eraan: ["jis": .string("jis:\(config.node)")],
            erachter: ["why": "the audit store writes again: permits may rise again (held records follow)",
                       "safety_critical": true],
            time: now)
        do {
            let tokens = try write([recovered] + held.map(\.record))
            publishHead(tokens)
            healthy = true
            shared.healthy.store(true, ordering: .releasing)
            let waiting = held
            held = []
            shared.stats.withLock {
                $0.recoveries += 1
                $0.held = 0
            }
            logger.notice("audit store recovered", metadata: ["token": "\(tokens[0].tokenId)", "held": "\(waiting.count)"])
            for (p, t) in zip(waiting, tokens.dropFirst()) {
                p.onDurable?(AuditAck(tokenId: t.tokenId, contentHash: t.contentHash))
            }
            onHealthChange?(true)
        } catch {
            failedAttempts += 1
            lastError = error
            shared.stats.withLock {
                $0.failures += 1
                $0.lastError = error.description
            }
            nextRetryNs = monotonicNowNs() + Int64(config.retryIntervalMs) * 1_000_000
        }
    }

    func finish() {
        let reason = shared.stopReason.withLock { $0 } ?? "closed"
        let stopped = AuditRecord(action: .stopped, erin: ["reason": .string(reason)],
                                  eraan: ["jis": .string("jis:\(config.node)")],
                                  erachter: ["why": "audit store closed", "safety_critical": true], time: time.now())
        if healthy {
            commit([AuditPending(record: stopped, onDurable: nil)])  // on failure it is held
        } else {
            held.append(AuditPending(record: stopped, onDurable: nil))
        }
        if !healthy {
            attemptRecovery()  // one last try to get the held records out
        }
        for p in held {
            p.onDurable?(AuditAck(error: AuditError(.closed, function: "close", path: config.directory,
                                                    detail: "the audit store closed while it could not write")))
        }
        held = []
        close(fd)
        fd = -1
        close(lockFd)
        shared.healthy.store(false, ordering: .releasing)
    }

    // MARK: writing

    /// Chains, signs and appends `records` as one batch, then fdatasyncs. On any failure the
    /// chain head is restored and the segment truncated back to its last durable size.
    func write(_ records: [AuditRecord]) throws(AuditError) -> [TibetToken] {
        if needsTruncate {
            try AuditFS.truncate(fd, to: size, path: segmentPath)
            needsTruncate = false
        }
        if size >= config.segmentBytes { try rotate() }
        let saved = chain
        var tokens: [TibetToken] = []
        tokens.reserveCapacity(records.count)
        var bytes: [UInt8] = []
        for r in records {
            var eromheen: [String: JSONValue] = [
                "node": .string(config.node),
                "host": .string(config.host),
                "version": .string(config.version),
                "wall_time": .string(RFC3339.format(wallNs: r.time.wallNs, fractionDigits: 9)),
                "monotonic_ns": .int(r.time.monotonicNs),
            ]
            for (k, v) in r.eromheen { eromheen[k] = v }
            var t = chain.append(action: r.action, wallNs: r.time.wallNs, actor: "jis:\(config.node)", erin: r.erin,
                                 eraan: r.eraan, eromheen: .object(eromheen), erachter: r.erachter)
            do { try t.sign(with: key) } catch {
                chain = saved
                throw AuditError(.sign, function: "sign", path: segmentPath, detail: error.description)
            }
            bytes.append(contentsOf: t.lineBytes)
            bytes.append(0x0A)
            tokens.append(t)
        }
        let ioStart = monotonicNowNs()
        shared.busySinceNs.store(ioStart, ordering: .releasing)
        defer {
            shared.busySinceNs.store(0, ordering: .releasing)
            let took = monotonicNowNs() - ioStart
            if took > shared.stallNs { stalledNs = max(stalledNs, took) }
        }
        do throws(AuditError) {
            if let e = config.hooks?.beforeWrite?(segmentPath, bytes.count) {
                throw AuditError(.write, function: "write", errno: e, path: segmentPath, detail: "injected by a test hook")
            }
            try AuditFS.writeAll(fd, bytes, path: segmentPath)
            if let e = config.hooks?.beforeSync?(segmentPath) {
                throw AuditError(.sync, function: "fdatasync", errno: e, path: segmentPath, detail: "injected by a test hook")
            }
            let t0 = monotonicNowNs()
            try AuditFS.dataSync(fd, path: segmentPath)
            let dt = monotonicNowNs() - t0
            shared.stats.withLock {
                $0.lastSyncNs = dt
                $0.maxSyncNs = max($0.maxSyncNs, dt)
                $0.totalSyncNs += dt
            }
        } catch {
            chain = saved
            // Never leave a partial line for the next batch to follow.
            do { try AuditFS.truncate(fd, to: size, path: segmentPath) } catch { needsTruncate = true }
            throw error
        }
        size += bytes.count
        shared.stats.withLock {
            $0.tokensWritten += UInt64(tokens.count)
            $0.batches += 1
            $0.largestBatch = max($0.largestBatch, tokens.count)
        }
        return tokens
    }

    /// Starts the next segment: created, its directory entry synced, then written to.
    func rotate() throws(AuditError) {
        let next = segment + 1
        let path = AuditFS.join(config.directory, AuditSegment.name(next))
        let newFd = try AuditFS.open(path, O_WRONLY | O_APPEND | O_CREAT, mode: 0o640)
        do throws(AuditError) {
            let existing = try AuditFS.size(newFd, path: path)
            guard existing == 0 else {
                throw AuditError(.open, function: "rotate", path: path, detail: "the next segment already holds \(existing) bytes")
            }
            try AuditFS.syncDirectory(config.directory)
        } catch {
            close(newFd)
            throw error
        }
        close(fd)
        fd = newFd
        segment = next
        segmentPath = path
        size = 0
        logger.info("audit segment rotated", metadata: ["segment": "\(path)"])
    }

    func publishHead(_ tokens: [TibetToken]) {
        guard let last = tokens.last else { return }
        let seg = AuditSegment.name(segment)
        shared.stats.withLock {
            $0.headId = last.tokenId
            $0.headHash = last.contentHash
            $0.segment = seg
        }
    }
}
