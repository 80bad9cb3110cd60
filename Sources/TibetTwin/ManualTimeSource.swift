import Synchronization

/// A clock that moves only when told to: for tests and offline decisions (`check --now`).
public final class ManualTimeSource: TimeSource {
    private let reading: Mutex<ClockReading>

    public init(_ start: ClockReading) { reading = Mutex(start) }

    /// Starts at `wallNs` on the wall clock, with the monotonic clock reading the same number.
    public convenience init(wallNs: Int64) { self.init(ClockReading(monotonicNs: wallNs, wallNs: wallNs)) }

    public func now() -> ClockReading { reading.withLock { $0 } }

    /// Moves both clocks forward (or back, for negative values) by `ms` milliseconds.
    public func advance(milliseconds ms: Double) {
        reading.withLock { $0 = $0.adding(milliseconds: ms) }
    }

    /// Sets both clocks.
    public func set(_ r: ClockReading) { reading.withLock { $0 = r } }
}
