#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A point in time read from both clocks at once: monotonic for ages, timeouts and re-arm,
/// wall for drift against the twin's `ts` and for the audit.
///
/// The decision core never reads a clock itself; callers hand it a `ClockReading`.
public struct ClockReading: Sendable, Hashable, CustomStringConvertible {
    /// Nanoseconds on the monotonic clock (`CLOCK_MONOTONIC`); only differences mean anything.
    public var monotonicNs: Int64
    /// Nanoseconds since the Unix epoch on the wall clock (`CLOCK_REALTIME`).
    public var wallNs: Int64

    public init(monotonicNs: Int64, wallNs: Int64) {
        self.monotonicNs = monotonicNs
        self.wallNs = wallNs
    }

    /// Milliseconds elapsed on the monotonic clock from `earlier` to `self` (negative if earlier is later).
    @inlinable
    public func millisecondsSince(_ earlier: ClockReading) -> Double {
        Double(monotonicNs &- earlier.monotonicNs) / 1_000_000
    }

    /// The same reading moved by `ms` milliseconds on both clocks.
    @inlinable
    public func adding(milliseconds ms: Double) -> ClockReading {
        let d = Int64(ms * 1_000_000)
        return ClockReading(monotonicNs: monotonicNs &+ d, wallNs: wallNs &+ d)
    }

    public var description: String { "mono=\(monotonicNs)ns wall=\(RFC3339.format(wallNs: wallNs))" }
}

/// Where readings come from: the system in production, a manual clock in tests.
public protocol TimeSource: Sendable {
    func now() -> ClockReading
}

/// The system clocks: `CLOCK_MONOTONIC` and `CLOCK_REALTIME`.
public struct SystemTimeSource: TimeSource {
    public init() {}

    @inlinable
    public func now() -> ClockReading {
        var mono = timespec()
        var wall = timespec()
        clock_gettime(CLOCK_MONOTONIC, &mono)
        clock_gettime(CLOCK_REALTIME, &wall)
        return ClockReading(
            monotonicNs: Int64(mono.tv_sec) * 1_000_000_000 + Int64(mono.tv_nsec),
            wallNs: Int64(wall.tv_sec) * 1_000_000_000 + Int64(wall.tv_nsec)
        )
    }
}
