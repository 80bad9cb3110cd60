import Appliance
import ArgumentParser
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// `tibet-twin maps layout [--csv] [--config FILE | PATH…]`: the interlock address table
/// (docs/interlock.md) for the loaded maps, as a PLC programmer needs it.
struct MapsLayoutCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "layout",
        abstract: "Print the interlock address table for the loaded maps.",
        discussion: """
            One row per served address: device, intent, table (coil, discrete, input, holding), \
            0-based address, Modicon address, meaning. Devices are in load order (map files \
            sorted by name), the order of their diagnostic blocks at input register 16 + 8·k. \
            Maps come from --config's `maps:` or from the paths given (default: maps/).

            Exit codes: 0 table printed, 1 invalid maps or config (one problem per line on \
            stderr), 2 usage error.
            """
    )

    @Flag(help: "CSV with a header line, for PLC tag import.")
    var csv = false

    @Option(help: "Appliance config file; its `maps:` are loaded.")
    var config: String?

    @Argument(help: "Map files or directories (default: maps/).")
    var paths: [String] = []

    func validate() throws {
        if config != nil && !paths.isEmpty {
            throw ValidationError("give --config or map paths, not both")
        }
    }

    func run() throws {
        var mapPaths = paths.isEmpty ? ["maps/"] : paths
        if let config {
            do {
                mapPaths = try ConfigMaps.paths(configPath: config)
            } catch {
                CLIOut.raw(error.issues.map { "\($0)\n" }.joined())
                throw ExitCode(1)
            }
        }
        let maps: [DeviceMap]
        do {
            maps = try MapFiles.load(paths: mapPaths)
        } catch {
            CLIOut.raw(error.issues.map { "\($0)\n" }.joined())
            throw ExitCode(1)
        }
        let layout: InterlockLayout
        do {
            layout = try InterlockLayout(maps: maps)
        } catch {
            CLIOut.raw("\(error)\n")
            throw ExitCode(1)
        }
        print(csv ? layout.csv() : layout.text(), terminator: "")
    }
}

