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
        let out = Mutex<[PhysicalState]>([])
        let body: @Sendable () -> Void = {
            var states: [PhysicalState] = []
            for map in maps {
                // Backoff never applies to a first attempt.
                var device = DeviceConnection(map: map, configuration: PollerConfiguration())
                states.append(device.poll(time: time).state)
                device.close()
            }
            out.withLock { $0 = states }
        }
        do {
            let t = try OSThread(name: "tt-read", body)
            t.join()
        } catch {
            return maps.map {
                ReadPlan(map: $0).failedState(quality: .badComm, why: "\(error)", at: time.now())
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
