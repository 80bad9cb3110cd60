import ArgumentParser
import Appliance
import TibetTwin

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
        subcommands: [RunCommand.self, DemoCommand.self, InfoCommand.self, ProfilesCommand.self, CheckCommand.self, StatusCommand.self, ResetCommand.self, MapsCommand.self, KeygenCommand.self, SignCommand.self, AuditCommand.self, SimulateCommand.self, ReadCommand.self, OPCUACommand.self]
    )

    /// Parses and runs, mapping argument-parser's usage exit code (64) to 2 as `--help` documents.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var async = command as? AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                let message = fullMessage(for: error)
                if !message.isEmpty { CLIOut.raw(message + "\n") }
                #if canImport(Glibc)
                Glibc.exit(2)
                #else
                Darwin.exit(2)
                #endif
            }
            exit(withError: error)
        }
    }
}
