import Logging
import Platform

/// The drop path's threads — the guard loop, the interlock server and the twin feeds' socket
/// event loop — run at nice `nice`, above the rest of the machine; the poll threads run 5
/// below the process (`PollWorker.niceSteps`). At 1,000 devices on two cores a tick's judging
/// took 6–9 ms of wall time for 2 ms of CPU, preempted by polls, PLC links and whatever else
/// the machine runs; a fault line arriving then waited for it (docs/benchmarks.md).
///
/// Raising needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows it: the systemd unit sets
/// `LimitNICE=-10`. Refused, the thread keeps its priority and says so once in the log.
enum SafetyPriority {
    static let nice: Int32 = -10

    /// Raises the calling thread to `nice`; `what` names it in the log line on refusal.
    static func raiseCurrentThread(_ what: String, logger: Logger) {
        if let e = OSThread.raiseCurrentPriority(to: nice) {
            logger.notice("\(what) keeps the normal priority: setpriority(\(nice)): \(e); allow it with LimitNICE=\(nice) (systemd) or CAP_SYS_NICE")
        }
    }
}
