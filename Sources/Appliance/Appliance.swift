import TibetTwin

/// The running system: poller, twin feeds, interlock server, audit store, HTTP, wiring.
public enum ApplianceInfo {
    /// The version printed by `--version` and written into every audit token.
    public static let version = "0.2.0-dev"
}
