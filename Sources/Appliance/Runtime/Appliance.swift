import Platform
import TibetTwin

/// The running system: poller, twin feeds, interlock server, audit store, HTTP, wiring.
package enum ApplianceInfo {
    /// The version printed by `--version` and written into every audit token.
    package static let version = "0.2.0-dev"
}
