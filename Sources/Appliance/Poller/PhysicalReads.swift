import Modbus
import Platform
import Synchronization
import TibetTwin

/// One-shot reads for `tibet-twin read` and tools: poll each map's PLC once on a dedicated
/// thread (libmodbus blocks; never on the cooperative pool) and return the states.
package enum PhysicalReads {
    /// Connects to each map's PLC, reads every group once (splitting on exception 2 as the
    /// poller does), closes, and returns one state per map, in order. Never throws: a PLC that
    /// cannot be read yields a bad state that says why.
    package static func readOnce(maps: [DeviceMap], time: any TimeSource = SystemTimeSource()) -> [PhysicalState] {
        readOnceTimed(maps: maps, time: time).map(\.state)
    }

    /// `readOnce`, plus each device's round trip per request in milliseconds (the requests of
    /// a good poll after the connection stood, divided by their count; nil when the poll was
    /// not good): the figure a map's `plc.rtt_ms` wants for the load of a shared TCP link.
    package static func readOnceTimed(maps: [DeviceMap], time: any TimeSource = SystemTimeSource())
        -> [(state: PhysicalState, rttMs: Double?)]
    {
        let out = Mutex<[(state: PhysicalState, rttMs: Double?)]>([])
        let body: @Sendable () -> Void = {
            var states: [(state: PhysicalState, rttMs: Double?)] = []
            for map in maps {
                // Backoff never applies to a first attempt. A first poll connects; the second,
                // on the open connection, is the one timed.
                var device = DeviceConnection(map: map, configuration: PollerConfiguration())
                let first = device.poll(time: time)
                var rtt: Double?
                var state = first.state
                if first.state.isAllGood {
                    let t0 = monotonicNowNs()
                    let second = device.poll(time: time)
                    let ns = monotonicNowNs() - t0
                    state = second.state
                    if second.state.isAllGood, second.requests > 0 {
                        rtt = Double(ns) / 1_000_000 / Double(second.requests)
                    }
                }
                states.append((state, rtt))
                device.close()
            }
            out.withLock { $0 = states }
        }
        do {
            let t = try OSThread(name: "tt-read", body)
            t.join()
        } catch {
            return maps.map {
                (ReadPlan(map: $0).failedState(quality: .badComm, why: "\(error)", at: time.now()), nil)
            }
        }
        return out.withLock { $0 }
    }

    /// Whether a state is what a commissioning check wants: the poll succeeded, every value and
    /// the status are good, and identity passes.
    package static func isHealthy(_ s: PhysicalState) -> Bool {
        s.isAllGood && s.identity.passes
    }
}
