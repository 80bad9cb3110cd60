import Logging
import Platform

/// The drop path's threads — the guard loop, the interlock server and the twin feeds' threads
/// (socket event loop, MQTT, OPC UA) — run under `SCHED_FIFO` at `realtimePriority`: each
/// runs the moment it has work, on whichever core runs something else, ahead of the poll
/// threads and the rest of the machine. Each does a short burst of work and blocks again (a line, a judgement, a Modbus
/// reply). At 1,000 devices on two cores the tail of "twin line → coil" was made of exactly
/// such waits at nice −10: the interlock server woken on the core where the guard was judging
/// a tick waited for the guard's slice, ≈ 2 ms (docs/benchmarks.md).
///
/// Real-time needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at least `realtimePriority`: the
/// systemd unit sets `LimitRTPRIO=10`. Refused, the thread falls back to nice `nice` (the
/// unit's `LimitNICE=-10`), and failing that keeps its priority; either way it says so once
/// in the log.
package enum SafetyPriority {
    /// Low among real-time priorities: the kernel's own threads that run real-time (interrupt
    /// threads on a PREEMPT_RT kernel, at 50) stay above the drop path.
    package static let realtimePriority: Int32 = 10
    /// The fallback without real-time.
    package static let nice: Int32 = -10

    /// What `raiseCurrentThread` got.
    enum Outcome: Equatable {
        case realtime
        /// Real-time was refused (the error); nice `nice` was not.
        case nice(realtimeRefused: Errno)
        /// Both were refused: the thread keeps its priority.
        case unchanged(realtimeRefused: Errno, niceRefused: Errno)
    }

    /// Makes the calling thread real-time, else raises it to `nice`; `what` names it in the
    /// log line on refusal. `realtime` is the attempt (the tests stand in a refusal).
    @discardableResult
    static func raiseCurrentThread(_ what: String, logger: Logger,
                                   realtime: (Int32) -> Errno? = { OSThread.makeCurrentRealtime(priority: $0) }) -> Outcome {
        guard let refused = realtime(realtimePriority) else { return .realtime }
        let fifo = "sched_setscheduler(SCHED_FIFO, \(realtimePriority)): \(refused)"
        if let e = OSThread.raiseCurrentPriority(to: nice) {
            logger.notice("\(what) keeps the normal priority: \(fifo); setpriority(\(nice)): \(e); allow real-time with LimitRTPRIO=\(realtimePriority) (systemd) or CAP_SYS_NICE")
            return .unchanged(realtimeRefused: refused, niceRefused: e)
        }
        logger.notice("\(what) runs at nice \(nice), not real-time: \(fifo); allow it with LimitRTPRIO=\(realtimePriority) (systemd) or CAP_SYS_NICE")
        return .nice(realtimeRefused: refused)
    }
}
