import ArgumentParser
import Appliance
import TibetTwin

/// `tibet-twin`: the digital-twin synchronicity guard.
@main
struct TibetTwinCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tibet-twin",
        abstract: "Digital-twin synchronicity guard: no action without proven synchronization.",
        discussion: """
            Exit codes: 0 success (or permit, for `check`), 1 failure (or block, for `check`; \
            invalid maps for `maps validate`), 2 bad input or usage.
            """,
        version: ApplianceInfo.version,
        subcommands: [AuditCommand.self]
    )
}
