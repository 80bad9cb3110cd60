import ArgumentParser
import Appliance
import TibetTwin

/// `tibet-twin demo` (interim, until the guard exists): the crane map served by the simulator
/// and read back by the poller, decoded, with a change seen through.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Simulate the crane PLC on loopback, read it back with the poller, change values and status, see them arrive.",
        discussion: "Exit codes: 0 every value and the status read back as set; 1 they did not; 2 bad input.")

    @Option(name: .long, help: ArgumentHelp("The map to demonstrate.", valueName: "M"))
    var map: String = "maps/crane-01.yaml"

    func run() throws {
        PhysicalCLI.capDescriptors()
        let maps = try PhysicalCLI.loadMaps([map])
        let ok = PhysicalDemo.run(map: maps[0]) { PhysicalCLI.out($0) }
        PhysicalCLI.out(ok ? "demo: every value and the status read back as set" : "demo: FAILED")
        if !ok { throw ExitCode(1) }
    }
}
