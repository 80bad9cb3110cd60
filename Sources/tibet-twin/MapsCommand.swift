import ArgumentParser
import Appliance
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// `tibet-twin maps …`: check register maps and show what the interlock serves for them.
/// Subcommands live in their own files; add one by listing it in `subcommands`.
struct MapsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "maps",
        abstract: "Check register maps; print the interlock address table.",
        subcommands: [MapsValidateCommand.self, MapsLayoutCommand.self]
    )
}

/// `tibet-twin maps validate [PATH…]`: every issue one per line on stderr and exit 1, or one
/// summary line per device on stdout and exit 0.
struct MapsValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check register map files and directories (default: maps/).",
        discussion: """
            Every problem of every file is printed to stderr, one per line, as \
            FILE:LINE:COL: KEY.PATH: MESSAGE. Directories contribute their *.yaml and *.yml \
            files, sorted by name. The maps are also checked against each other (unique device \
            names, no coil claimed twice) and twin_key files must hold an Ed25519 public key.

            Exit codes: 0 all maps valid, 1 at least one problem, 2 usage error.
            """
    )

    @Argument(help: "Map files or directories.")
    var paths: [String] = []

    func run() throws {
        let maps: [DeviceMap]
        do {
            maps = try MapFiles.load(paths: paths.isEmpty ? ["maps/"] : paths)
        } catch {
            CLIOut.raw(error.issues.map { "\($0)\n" }.joined())
            throw ExitCode(1)
        }
        // Warnings do not fail the run: the map is valid, but probably not what was meant.
        let warnings = maps.flatMap(\.warnings)
        if !warnings.isEmpty {
            CLIOut.raw(warnings.map { "\($0.location): warning: \($0.keyPath): \($0.message)".escapingControlCharacters() + "\n" }.joined())
        }
        for map in maps {
            print(MapSummary.line(for: map))
        }
        // Every serial link, and every TCP link more than one map shares, with its load.
        for link in LinkBudget(maps: maps).links where link.key.hasPrefix("serial:") || link.devices.count > 1 {
            print(link.summary)
        }
    }
}

/// The one-line summary of a valid map that `maps validate` prints.
enum MapSummary {
    static func line(for map: DeviceMap) -> String {
        let intents = map.intents.map { "\($0.name)=coil \($0.coil)" }.joined(separator: ", ")
        return "\(map.device): profile \(map.profile.rawValue), \(map.registers.count) registers, "
            + "\(map.intents.count) intents (\(intents)), plc \(map.plc.linkName) unit \(map.plc.unit)"
            + (map.statusDerived ? ", status derived" : "") + ", "
            + "\(map.sourceFile)"
    }
}

