import ArgumentParser
import Appliance
import Commissioning
import Logging

/// `tibet-twin demo`: the crane story end to end on loopback (docs/cli.md).
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "The crane scenario end to end on loopback: simulated PLC, twin feed, guard, interlock client.",
        discussion: """
            Runs the whole appliance in this process against a simulated PLC and a twin that \
            sends feed lines over TCP, while a libmodbus client reads the permit coil every 2 ms. \
            Scenarios: in sync → permit; the PLC goes FAULT while the twin says operational → \
            blocked; the load changes beyond tolerance → blocked; the twin goes silent while the \
            values still match → blocked after max_age_ms; the twin comes back → re-armed; a write \
            to the coil → refused. Each prints how many ms the coil took to follow. Ends with \
            `audit verify` of the demo's chain.

            Exit codes: 0 every scenario came out as it must; 1 one did not; 2 bad usage.
            """
    )

    @Option(help: ArgumentHelp("Keep the demo's audit chain in DIR (default: a temporary directory, removed after).",
                               valueName: "DIR"))
    var audit: String?

    @Flag(help: "Colour even when stdout is not a terminal.")
    var color = false

    @Option(help: ArgumentHelp("How the twin reaches the appliance: tcp (its own feed), mqtt (through a local mosquitto the demo starts), or opcua (a local asyncua server with the crane model, bound in the map).",
                               valueName: "tcp|mqtt|opcua"))
    var twin: String = "tcp"

    func validate() throws {
        guard ["tcp", "mqtt", "opcua"].contains(twin) else { throw ValidationError("--twin must be tcp, mqtt or opcua, not \(twin)") }
    }

    func run() async throws {
        LoggingSystem.bootstrap { LineLogHandler(label: $0, level: .error) }
        let demo = CraneDemo(auditDir: audit, color: color || CLIOut.stdoutIsTerminal, twinOverMQTT: twin == "mqtt", twinOverOPCUA: twin == "opcua") { CLIOut.outputLine($0) }
        if await !demo.run() { throw ExitCode(1) }
    }
}
