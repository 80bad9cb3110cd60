import Logging
import Platform
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// The part of the twin feed every source shares: the parser, the per-device `seq` state (one
/// `TwinValidator` for all sources, so a line replayed through another source is still a
/// replay) and the appliance's sink.
///
/// Thread-safe. Parsing and signature checks run on the calling source's thread without a lock;
/// only ordering and the hand-over take the lock, so the sink sees each device's states in
/// `seq` order even when several sources deliver at once.
package final class TwinFeedPipeline: Sendable {
    /// The parser in use; `replace(parser:forgetting:)` swaps it on a reload.
    package var parser: TwinLineParser { current.withLock { $0 } }
    private let current: Mutex<TwinLineParser>
    /// Also records per device the memo (`TwinLineMemo.id`; 0: none) of the source whose line
    /// was accepted last (`TwinValidator.exchangeSource`): a repeat is news when another source
    /// spoke since.
    private let validator: Mutex<TwinValidator>
    private let sink: @Sendable (TwinState, _ news: Bool) -> Void
    private let seqReset: (@Sendable (TwinSeqReset) -> Bool)?
    private let withdrawSink: (@Sendable (String) -> Void)?

    /// `sink` receives every accepted state and every identity-failure state (see
    /// `TwinLineOutcome`; `TwinState.isIdentityFailure` tells them apart). It is called with the
    /// pipeline's lock held: it must not block and must not call back into the feed. The
    /// appliance's inbox keeps only the latest state per device, which bounds memory in a burst.
    ///
    /// `seqReset` puts a device's `seq` restart on the record (`TwinValidator`: a lower `seq`
    /// after a long silence); it runs with the lock held, before `sink` gets the line's state,
    /// must not block, and answers whether the restart is recorded. Without it a lower `seq` is
    /// always a replay.
    ///
    /// `withdraw` takes a device's twin state away in the guard (a Sparkplug death: the device
    /// blocks at once on `NO_TWIN`); without it a withdrawn device only goes stale.
    package convenience init(parser: TwinLineParser, seqReset: (@Sendable (TwinSeqReset) -> Bool)? = nil,
                             withdraw: (@Sendable (String) -> Void)? = nil,
                             sink: @escaping @Sendable (TwinState) -> Void) {
        self.init(parser: parser, seqReset: seqReset, withdraw: withdraw, newsSink: { state, _ in sink(state) })
    }

    /// A pipeline whose sink is also told whether a state is news: false for a line that
    /// repeated its device's last one in the source's memo (`TwinLineMemo`), which says what the
    /// source's last state of that device said, with a new time.
    package init(parser: TwinLineParser, seqReset: (@Sendable (TwinSeqReset) -> Bool)? = nil,
                 withdraw: (@Sendable (String) -> Void)? = nil,
                 newsSink sink: @escaping @Sendable (TwinState, _ news: Bool) -> Void) {
        self.current = Mutex(parser)
        self.validator = Mutex(TwinValidator(parser: parser))
        self.seqReset = seqReset
        self.withdrawSink = withdraw
        self.sink = sink
    }

    /// Orders and hands over a state a source built itself (Sparkplug metrics, not a line):
    /// the same per-device ordering as lines (a state older than the last accepted is a
    /// replay). A device with a `twin_key` cannot be fed this way: its state is handed over as
    /// an identity failure (unsigned), which blocks it.
    package func submit(_ state: TwinState) -> TwinLineOutcome {
        var state = state
        let unknownDevice = current.withLock { p -> Bool in
            guard let rules = p.devices[state.device] else { return true }
            if rules.key != nil { state.signature = .missing }
            return false
        }
        if unknownDevice {
            return .dropped(TwinDrop(reason: .unknownDevice, device: state.device, detail: "no map for \(state.device)"))
        }
        let outcome: TwinLineOutcome = state.signature == .missing
            ? .identityFailure(state, TwinDrop(reason: .missingSignature, device: state.device,
                                               detail: "the map has a twin_key; a Sparkplug state carries no signature"))
            : .accepted(state, unknownValues: [])
        return validator.withLock { v in
            var slot = -1
            let o = v.admit(outcome, slot: &slot) { _ in false }
            switch o {
            case .accepted(let s, _), .identityFailure(let s, _):
                _ = v.exchangeSource(device: s.device, slot: &slot, 0)
                sink(s, true)
            case .dropped: break
            }
            return o
        }
    }

    /// Takes `device`'s twin state away in the guard (see `init`).
    package func withdraw(device: String) {
        validator.withLock { v in
            var slot = -1
            _ = v.exchangeSource(device: device, slot: &slot, 0)
            withdrawSink?(device)
        }
    }

    /// Parses, validates, orders and hands over one line (without its newline). With
    /// `requiredDevice` (an MQTT topic that names the device), a line for another device is
    /// dropped as `topic_mismatch` before it can move anything; a failed signature check still
    /// blocks the device it names.
    package func process(_ line: UnsafeBufferPointer<UInt8>, received: ClockReading,
                         requiredDevice: Substring? = nil) -> TwinLineOutcome {
        var slot = -1
        return admit(current.withLock { $0 }.parse(buffer: line, received: received), requiredDevice: requiredDevice, source: 0,
                     news: true, slot: &slot)
    }

    /// `process(_:received:requiredDevice:)` for a source that keeps a memo of its lines
    /// (`TwinLineMemo`: a line repeating its device's last one but for `ts` and `seq` is not
    /// parsed again). One memo per connection or file, used from one thread at a time.
    package func process(_ line: UnsafeBufferPointer<UInt8>, received: ClockReading, memo: inout TwinLineMemo) -> TwinLineOutcome {
        let repeats = memo.repeats
        let parsed = current.withLock { $0 }.parse(buffer: line, received: received, memo: &memo)
        // The memo keeps the device's validator slot, so a repeat is ordered without a lookup by name.
        var slot = memo.slotHint
        let outcome = admit(parsed, requiredDevice: nil, source: memo.id, news: memo.repeats == repeats, slot: &slot)
        if slot >= 0 { memo.slotHint = slot }
        // The memo must hold only lines the guard got: a line the ordering dropped (a replay)
        // is forgotten, so a later line like it counts as news.
        if case .accepted(let s, _) = parsed, case .dropped = outcome { memo.forget(device: s.device) }
        return outcome
    }

    /// `source`: the memo the line went through (0: none). A repeat is news all the same when
    /// the device's last accepted line came from another source: the guard may hold what that
    /// one said (a twin failing over between two connections).
    private func admit(_ outcome: TwinLineOutcome, requiredDevice: Substring?, source: UInt64, news: Bool, slot: inout Int) -> TwinLineOutcome {
        var parsed = outcome
        if let requiredDevice, case .accepted(let s, _) = parsed, s.device != requiredDevice {
            parsed = .dropped(TwinDrop(reason: .topicMismatch, device: s.device,
                                       detail: "the topic names \"\(requiredDevice)\", the line is for \"\(s.device)\""))
        }
        return validator.withLock { v in
            let outcome = v.admit(parsed, slot: &slot) { reset in seqReset?(reset) ?? false }
            switch outcome {
            case .accepted(let s, _):
                let previous = v.exchangeSource(device: s.device, slot: &slot, source)
                sink(s, news || previous != source)
            case .identityFailure(let s, _):
                _ = v.exchangeSource(device: s.device, slot: &slot, 0)
                sink(s, true)
            case .dropped: break
            }
            return outcome
        }
    }

    /// Judges lines by a new parser from now on (a SIGHUP reload with new maps or keys) and
    /// forgets the `seq` state of `devices` (those whose map changed); the other devices keep
    /// theirs, so a replay across a reload is still a replay. Lines already being parsed finish
    /// with the old parser.
    package func replace(parser: TwinLineParser, forgetting devices: [String]) {
        current.withLock { $0 = parser }
        validator.withLock { v in for d in devices { v.forget(device: d) } }
    }

    /// Forgets a device's `seq` state (for reloads where its map changed).
    package func forget(device: String) {
        validator.withLock { $0.forget(device: device) }
    }
}

/// A twin source's counters, as a value for metrics and status. Every non-blank line read is
/// either accepted or dropped for exactly one reason: `lines == accepted + droppedTotal`.
package struct TwinFeedCounters: Sendable, Hashable {
    /// The source's name: `file:/var/lib/…`, `tcp:127.0.0.1:7502`, `unix:/run/…`.
    package var source: String
    /// Lines read (blank lines excluded).
    package var lines: UInt64 = 0
    package var accepted: UInt64 = 0
    package var dropped: [TwinDropReason: UInt64] = [:]
    /// Accepted lines that carried value names the map does not know (reported, not applied).
    package var unknownValueLines: UInt64 = 0
    /// Empty or whitespace-only lines (ignored; a twin may use them as keep-alives).
    package var blankLines: UInt64 = 0
    /// Bytes read.
    package var bytes: UInt64 = 0
    /// Socket sources: clients accepted, currently connected, refused at accept (any reason:
    /// `clientsClosed` has them by reason), and cut off for sending only garbage or an over-long line.
    package var clientsAccepted: UInt64 = 0
    package var clientsConnected: Int = 0
    package var clientsRefused: UInt64 = 0
    package var clientsCutOff: UInt64 = 0
    /// Socket sources: connections refused at accept or closed by the appliance, by reason.
    package var clientsClosed: [TwinClientCloseReason: UInt64] = [:]
    /// File source: rotations and truncations followed.
    package var rotations: UInt64 = 0
    package var truncations: UInt64 = 0
    /// MQTT source: connections the broker accepted, outages (each counted once, however many
    /// reconnect attempts it took), and messages the broker delivered from its retained store.
    package var brokerConnects: UInt64 = 0
    package var brokerLosses: UInt64 = 0
    package var retainedMessages: UInt64 = 0
    /// Lines per device, for the devices the maps know: a line is counted here only once the
    /// parser has found its `device` in the maps, so no line can add a name.
    package var devices: [String: DeviceTwinCounters] = [:]

    package init(source: String) { self.source = source }

    package var droppedTotal: UInt64 { dropped.values.reduce(0, +) }

    /// Dropped lines that were failed signature checks (missing, invalid, not last).
    package var identityFailures: UInt64 {
        dropped.filter { $0.key.isIdentityFailure }.values.reduce(0, +)
    }
}

/// One device's lines in one twin source.
package struct DeviceTwinCounters: Sendable, Hashable {
    package var accepted: UInt64 = 0
    package var dropped: [TwinDropReason: UInt64] = [:]

    package init(accepted: UInt64 = 0, dropped: [TwinDropReason: UInt64] = [:]) {
        self.accepted = accepted
        self.dropped = dropped
    }
}

/// Why a socket source refused or closed a client (the `reason` label of
/// `tibet_twin_twin_clients_closed_total`, docs/twin-feed.md).
package enum TwinClientCloseReason: String, Sendable, Hashable, CaseIterable {
    /// Refused at accept: the peer is not in the feed's `allow` list.
    case notAllowed = "not_allowed"
    /// Refused at accept: `max_clients` connections are open.
    case tooManyClients = "too_many_clients"
    /// Refused at accept: `max_clients_per_address` connections from this address are open.
    case tooManyFromAddress = "too_many_from_address"
    /// No accepted line within `idle_timeout_ms`.
    case idleTimeout = "idle_timeout"
    /// A line stayed incomplete beyond `line_timeout_ms`.
    case lineTimeout = "line_timeout"
    /// The TLS handshake failed (no client certificate, one not signed by the CA, not TLS).
    case tlsFailed = "tls_failed"
}

/// What every source does with a line: hand it to the pipeline, count it, log drops (rate-limited).
/// Thread-safe; one per source.
final class TwinSourceCore: Sendable {
    let name: String
    let pipeline: TwinFeedPipeline
    let logger: Logger
    let clock: any TimeSource
    let counters: Mutex<TwinFeedCounters>
    let limiter: Mutex<RateLimit>

    init(name: String, pipeline: TwinFeedPipeline, logger: Logger, clock: any TimeSource, logIntervalSeconds: Double) {
        self.name = name
        self.pipeline = pipeline
        self.logger = logger
        self.clock = clock
        self.counters = Mutex(TwinFeedCounters(source: name))
        self.limiter = Mutex(RateLimit(intervalSeconds: logIntervalSeconds))
    }

    /// Processes one line; `nil` for a blank line. `where` names the client or file position.
    func handle(_ line: UnsafeBufferPointer<UInt8>, received: ClockReading, lineNumber: UInt64,
                requiredDevice: Substring? = nil, where place: @autoclosure () -> String) -> TwinLineOutcome? {
        if Self.isBlank(line) {
            counters.withLock { $0.blankLines += 1 }
            return nil
        }
        return count(pipeline.process(line, received: received, requiredDevice: requiredDevice),
                     received: received, lineNumber: lineNumber, where: place())
    }

    /// `handle` for a source that keeps a memo of its lines (one per connection or file).
    func handle(_ line: UnsafeBufferPointer<UInt8>, received: ClockReading, lineNumber: UInt64, memo: inout TwinLineMemo,
                where place: @autoclosure () -> String) -> TwinLineOutcome? {
        if Self.isBlank(line) {
            counters.withLock { $0.blankLines += 1 }
            return nil
        }
        return count(pipeline.process(line, received: received, memo: &memo), received: received, lineNumber: lineNumber, where: place())
    }

    private func count(_ outcome: TwinLineOutcome, received: ClockReading, lineNumber: UInt64,
                       where place: @autoclosure () -> String) -> TwinLineOutcome {
        switch outcome {
        case .accepted(let state, let unknown):
            counters.withLock {
                $0.lines += 1
                $0.accepted += 1
                if !unknown.isEmpty { $0.unknownValueLines += 1 }
                $0.devices[state.device, default: DeviceTwinCounters()].accepted += 1
            }
            if !unknown.isEmpty, case .accepted(let s, _) = outcome {
                logRateLimited(key: "unknown_value", received: received) { suppressed in
                    logger.warning("twin line has value names the map does not know; they are ignored, the rest is applied", metadata: [
                        "source": "\(name)", "at": "\(place())", "line": "\(lineNumber)", "device": "\(s.device)",
                        "names": "\(unknown.sorted().prefix(8).joined(separator: ","))", "suppressed": "\(suppressed)",
                    ])
                }
            }
        case .identityFailure(_, let drop), .dropped(let drop):
            countDrop(drop, received: received, lineNumber: lineNumber, where: place())
        }
        return outcome
    }

    /// Counts and (rate-limited) logs a drop the source detected itself (too long, incomplete).
    func countDrop(_ drop: TwinDrop, received: ClockReading, lineNumber: UInt64, where place: @autoclosure () -> String) {
        counters.withLock {
            $0.lines += 1
            $0.dropped[drop.reason, default: 0] += 1
            // `device` is set only for a device of the maps (the parser drops unknown ones first).
            if let d = drop.device { $0.devices[d, default: DeviceTwinCounters()].dropped[drop.reason, default: 0] += 1 }
        }
        logRateLimited(key: drop.reason.rawValue, received: received) { suppressed in
            var meta: Logger.Metadata = ["source": "\(name)", "at": "\(place())", "line": "\(lineNumber)",
                                         "reason": "\(drop.reason)", "detail": "\(drop.detail)", "suppressed": "\(suppressed)"]
            if let d = drop.device { meta["device"] = "\(d)" }
            if drop.reason.isIdentityFailure {
                logger.error("twin line failed its signature check; the device blocks on IDENTITY until a valid line arrives", metadata: meta)
            } else {
                logger.warning("twin line dropped", metadata: meta)
            }
        }
    }

    func logRateLimited(key: String, received: ClockReading, _ body: (Int) -> Void) {
        if let suppressed = limiter.withLock({ $0.admit(key, nowNs: received.monotonicNs) }) { body(suppressed) }
    }

    func update(_ body: (inout TwinFeedCounters) -> Void) { counters.withLock { body(&$0) } }

    var snapshot: TwinFeedCounters { counters.withLock { $0 } }

    static func isBlank(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
        for c in b where !(c == 0x20 || c == 0x09 || c == 0x0D) { return false }
        return true
    }
}

/// Splits a byte stream into lines at `\n` (a preceding `\r` is dropped too), holding at most
/// one partial line of up to `maxLineBytes` between chunks.
struct LineFramer {
    enum Event {
        /// A complete line, newline removed. Valid only during the callback.
        case line(UnsafeBufferPointer<UInt8>)
        /// A line passed `maxLineBytes` before its newline; its bytes up to the next newline are skipped.
        case tooLong(Int)
    }

    let maxLineBytes: Int
    private(set) var partial: [UInt8] = []
    /// Skipping the rest of an over-long line (or, for a file opened mid-line, its first fragment).
    var discarding = false

    init(maxLineBytes: Int) { self.maxLineBytes = maxLineBytes }

    /// Bytes held of an unfinished line.
    var pendingBytes: Int { partial.count }

    /// Forgets any partial line; returns whether there was one.
    mutating func reset() -> Bool {
        let had = !partial.isEmpty
        partial.removeAll(keepingCapacity: partial.capacity <= 1 << 17)
        discarding = false
        return had
    }

    /// Feeds a chunk; calls `body` per event in order. `body` returns `false` to stop (the rest
    /// of the chunk is ignored, e.g. when the client is cut off).
    mutating func feed(_ chunk: UnsafeRawBufferPointer, _ body: (Event) -> Bool) {
        guard let base = chunk.baseAddress?.assumingMemoryBound(to: UInt8.self), chunk.count > 0 else { return }
        let n = chunk.count
        var start = 0
        while start < n {
            let rest = n - start
            guard let nlPtr = memchr(base + start, 0x0A, rest) else {
                // No newline: keep the fragment.
                if discarding { return }
                if partial.count + rest > maxLineBytes {
                    let total = partial.count + rest
                    partial.removeAll(keepingCapacity: false)
                    discarding = true
                    _ = body(.tooLong(total))
                    return
                }
                partial.append(contentsOf: UnsafeBufferPointer(start: base + start, count: rest))
                return
            }
            let nl = base.distance(to: nlPtr.assumingMemoryBound(to: UInt8.self))
            if discarding {
                discarding = false
                start = nl + 1
                continue
            }
            var keepGoing: Bool
            if partial.isEmpty {
                var end = nl
                if end > start, base[end - 1] == 0x0D { end -= 1 }
                if end - start > maxLineBytes {
                    keepGoing = body(.tooLong(end - start))
                } else {
                    keepGoing = body(.line(UnsafeBufferPointer(start: base + start, count: end - start)))
                }
            } else {
                let total = partial.count + (nl - start)
                if total > maxLineBytes {
                    partial.removeAll(keepingCapacity: false)
                    keepGoing = body(.tooLong(total))
                } else {
                    partial.append(contentsOf: UnsafeBufferPointer(start: base + start, count: nl - start))
                    if partial.last == 0x0D { partial.removeLast() }
                    keepGoing = partial.withUnsafeBufferPointer { body(.line($0)) }
                    partial.removeAll(keepingCapacity: true)
                }
            }
            start = nl + 1
            if !keepGoing { return }
        }
    }
}
