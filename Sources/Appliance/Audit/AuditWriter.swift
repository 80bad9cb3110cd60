#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import Logging
import Synchronization
import TibetTwin
import Platform

// The audit writer thread: group commit, segments, signing, the durable acknowledgements.
// `AuditStore` (AuditStore.swift) is its façade.

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
            if recovered.createdSegment {
                config.hooks?.observe?(.created(path: segmentPath))
                try AuditFS.syncDirectory(config.directory)
                config.hooks?.observe?(.directorySynced(path: config.directory))
            }
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
            config.hooks?.observe?(.truncated(path: segmentPath, size: size))
            needsTruncate = false
        }
        var records = records
        var retention: RetentionPlan?
        if size >= config.segmentBytes {
            try rotate()
            // The cut record goes first into the new segment, durable with this batch, before
            // any old segment is unlinked (docs/audit.md, Retention).
            retention = retentionPlan()
            if let retention { records.insert(retention.record, at: 0) }
        }
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
            config.hooks?.observe?(.wrote(path: segmentPath, bytes: bytes.count))
            if let e = config.hooks?.beforeSync?(segmentPath) {
                throw AuditError(.sync, function: "fdatasync", errno: e, path: segmentPath, detail: "injected by a test hook")
            }
            let t0 = monotonicNowNs()
            try AuditFS.dataSync(fd, path: segmentPath)
            config.hooks?.observe?(.synced(path: segmentPath))
            let dt = monotonicNowNs() - t0
            shared.stats.withLock {
                $0.lastSyncNs = dt
                $0.maxSyncNs = max($0.maxSyncNs, dt)
                $0.totalSyncNs += dt
            }
        } catch {
            chain = saved
            // Never leave a partial line for the next batch to follow.
            do {
                try AuditFS.truncate(fd, to: size, path: segmentPath)
                config.hooks?.observe?(.truncated(path: segmentPath, size: size))
            } catch { needsTruncate = true }
            throw error
        }
        size += bytes.count
        shared.stats.withLock {
            $0.tokensWritten += UInt64(tokens.count)
            $0.batches += 1
            $0.largestBatch = max($0.largestBatch, tokens.count)
        }
        if let retention {
            removeSegments(retention)
            return Array(tokens.dropFirst())
        }
        return tokens
    }

    // MARK: retention

    struct RetentionPlan {
        var remove: [Int]
        var record: AuditRecord
    }

    /// Which old segments `audit.retain` removes now (oldest first, never the current segment
    /// nor the one just closed, only while the bound is exceeded), and the `audit_retained`
    /// record vouching for the cut; nil when nothing is to be removed. A segment that cannot
    /// be read, or does not end in a whole token, stops the plan there: it is kept.
    func retentionPlan() -> RetentionPlan? {
        guard config.retainMaxBytes != nil || config.retainMaxAgeDays != nil,
              let numbers = try? AuditFS.segmentNumbers(in: config.directory) else { return nil }
        let present = Set(numbers)
        var run = [segment]
        while let f = run.first, f > 1, present.contains(f - 1) { run.insert(f - 1, at: 0) }
        var sizes: [Int: Int] = [:]
        var total = 0
        for n in run {
            var st = stat()
            guard stat(AuditFS.join(config.directory, AuditSegment.name(n)), &st) == 0 else { return nil }
            sizes[n] = Int(st.st_size)
            total += Int(st.st_size)
        }
        let nowNs = time.now().wallNs
        let ageLimitNs: Int64? = config.retainMaxAgeDays.map { nowNs - Int64($0) * 86_400 * 1_000_000_000 }
        var removed: [JSONValue] = []
        var remove: [Int] = []
        var tokensRemoved = 0
        var bytesRemoved = 0
        var reasons: Set<String> = []
        var last: TibetToken?
        var keptKey: Curve25519.Signing.PublicKey?
        for n in run.dropLast(2) {
            let overBytes = config.retainMaxBytes.map { total > $0 } ?? false
            guard let data = try? AuditFS.readAll(AuditFS.join(config.directory, AuditSegment.name(n))) else { break }
            let (lines, rest) = ChainVerifier.split(data)
            guard rest.isEmpty, let l = lines.last, let t = AuditTail.parseToken(l),
                  t.computeContentHash() == t.contentHash, let tNs = RFC3339.parse(t.timestamp) else { break }
            let tooOld = ageLimitNs.map { tNs < $0 } ?? false
            guard overBytes || tooOld else { break }
            if overBytes { reasons.insert("max_bytes") }
            if tooOld { reasons.insert("max_age_days") }
            remove.append(n)
            removed.append(["segment": .int(Int64(n)), "last_id": .string(t.tokenId), "last_hash": .string(t.contentHash),
                            "tokens": .int(Int64(lines.count)), "bytes": .int(Int64(sizes[n] ?? 0))])
            keptKey = AuditTail.lastAnnouncedKey(in: lines[...]) ?? keptKey
            tokensRemoved += lines.count
            bytesRemoved += sizes[n] ?? 0
            total -= sizes[n] ?? 0
            last = t
        }
        guard let last, let firstKept = remove.last.map({ $0 + 1 }) else { return nil }
        let why = reasons.sorted().joined(separator: ", ")
        var erin: [String: JSONValue] = [
            "first_kept_segment": .int(Int64(firstKept)),
            "last_removed_id": .string(last.tokenId),
            "last_removed_hash": .string(last.contentHash),
            "removed": .array(removed),
            "removed_segments": .int(Int64(remove.count)),
            "removed_tokens": .int(Int64(tokensRemoved)),
            "removed_bytes": .int(Int64(bytesRemoved)),
            "kept_bytes": .int(Int64(total)),
            "reason": .string(why),
            "public_key": .string(publicKeyText),
            "key_id": .string(fingerprint),
        ]
        // The key that signs the first kept token: the last one announced in what is removed;
        // if none is, the key in effect where the previous cut left the chain (that cut's
        // record is still in a kept segment); else this store's own.
        if keptKey == nil { keptKey = previousCutKeptKey(run: Array(run.dropFirst(remove.count))) }
        if let keptKey {
            erin["kept_key"] = .string(Base64.encode(Array(keptKey.rawRepresentation)))
            erin["kept_key_id"] = .string(KeyText.fingerprint(of: keptKey))
        }
        if let b = config.retainMaxBytes { erin["max_bytes"] = .int(Int64(b)) }
        if let d = config.retainMaxAgeDays { erin["max_age_days"] = .int(Int64(d)) }
        let record = AuditRecord(
            action: .auditRetained, erin: .object(erin), eraan: ["jis": .string("jis:\(config.node)")],
            erachter: ["why": .string("audit.retain (\(why)): \(AuditSegment.name(remove[0])) … \(AuditSegment.name(firstKept - 1)) removed; the kept chain starts at \(AuditSegment.name(firstKept))"),
                       "safety_critical": true],
            time: time.now())
        return RetentionPlan(remove: remove, record: record)
    }

    /// The key in effect at the first kept segment of the newest earlier cut: its `kept_key`,
    /// else its own key; nil when no cut record is found among the segments `run`.
    func previousCutKeptKey(run: [Int]) -> Curve25519.Signing.PublicKey? {
        for n in run.reversed() {
            guard let data = try? AuditFS.readAll(AuditFS.join(config.directory, AuditSegment.name(n))) else { return nil }
            for l in ChainVerifier.split(data).lines.reversed() where l.starts(with: AuditTail.retainedPrefix) {
                guard let t = AuditTail.parseToken(l),
                      let text = t.erin["kept_key"]?.stringValue ?? t.erin["public_key"]?.stringValue else { return nil }
                return try? KeyText.publicKey(from: text)
            }
        }
        return nil
    }

    /// Unlinks the planned segments, oldest first, after their cut record is durable; then
    /// syncs the directory. A failure leaves old segments behind (verify accepts them; the next
    /// rotation plans again): logged, never a failure of the store.
    func removeSegments(_ plan: RetentionPlan) {
        for n in plan.remove {
            let path = AuditFS.join(config.directory, AuditSegment.name(n))
            if unlink(path) != 0 && errno != ENOENT {
                logger.error("audit retention: cannot remove a segment", metadata: ["segment": "\(path)", "errno": "\(errno)"])
                break
            }
        }
        do { try AuditFS.syncDirectory(config.directory) } catch {
            logger.error("audit retention: directory sync failed", metadata: ["error": "\(error)"])
        }
        shared.stats.withLock { $0.segmentsRemoved += plan.remove.count }
        logger.info("audit retention removed segments", metadata: ["first_kept": "\((plan.remove.last ?? 0) + 1)", "count": "\(plan.remove.count)"])
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
            config.hooks?.observe?(.created(path: path))
            try AuditFS.syncDirectory(config.directory)
            config.hooks?.observe?(.directorySynced(path: config.directory))
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
