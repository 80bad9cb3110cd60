import ArgumentParser
import Appliance
import Commissioning
import Foundation
import Modbus
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// Output helpers of the physical-side commands: whole lines straight to file descriptors 1
/// and 2 (unbuffered, so a parent reading a pipe sees `listening …` at once).
enum PhysicalCLI {
    static func out(_ s: String) { CLIOut.write(1, s.hasSuffix("\n") ? s : s + "\n") }
    static func err(_ s: String) { CLIOut.write(2, s.hasSuffix("\n") ? s : s + "\n") }

    /// Loads maps (files or folders), printing every problem; exit 2 on any.
    static func loadMaps(_ paths: [String]) throws -> [DeviceMap] {
        do {
            return try MapFiles.load(paths: paths)
        } catch {
            for issue in error.issues { err(issue.description) }
            throw ExitCode(2)
        }
    }

    /// `host:port`, `[v6]:port`; nil if malformed.
    static func parseEndpoint(_ s: String) -> (host: String, port: Int)? {
        if s.hasPrefix("["), let close = s.firstIndex(of: "]") {
            let host = String(s[s.index(after: s.startIndex)..<close])
            let rest = s[s.index(after: close)...]
            guard rest.hasPrefix(":"), let p = Int(rest.dropFirst()), (0...65535).contains(p) else { return nil }
            return (host, p)
        }
        guard let colon = s.lastIndex(of: ":"), let p = Int(s[s.index(after: colon)...]), (0...65535).contains(p) else { return nil }
        let host = String(s[..<colon])
        return host.isEmpty || host.contains(":") ? nil : (host, p)
    }

    /// Keeps libmodbus's select() safe: descriptors stay below 1024.
    static func capDescriptors() {
        do { try DescriptorLimit.capForSelect() } catch { err("warning: \(error)") }
    }

    /// Lets SIGTERM and SIGINT end the process even when the parent started it with them
    /// blocked (the mask is inherited; some process launchers do that).
    static func unblockTerminationSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}

/// `tibet-twin simulate`: a PLC simulator serving a map's registers.
struct SimulateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Serve a map's registers as a simulated PLC (Modbus/TCP or RTU), values settable from stdin.",
        discussion: """
            Each map is served on its own port: without --listen at its own plc host:port; with \
            --listen HOST:PORT the i-th device (replicas included) on PORT+i, or on any free port \
            each when PORT is 0. Once listening it prints one line per device: \
            `listening HOST:PORT DEVICE`.

            With --serial PATH the maps are served as Modbus RTU devices on that serial port (one \
            end of a null-modem cable or of a socat pty pair), each under its own plc.unit; line \
            settings from the first map's plc, or --baud/--parity/--data-bits/--stop-bits. It \
            prints `listening PATH unit N DEVICE` per device. A unit no map has never answers; \
            `stall MS` makes devices silent for that long; `drop` does not apply.

            Starting values: status = the code of `operational`, identity registers = their \
            `expect`, everything else 0 unless --set NAME=VALUE.

            Commands on stdin, one per line, each answered `ok …` on stdout (errors on stderr):
              set NAME VALUE      set a value (register, identity or `status` name)
              status NAME|CODE    set the status (an unmapped code tests bad_decode)
              stall MS            answer nothing for MS ms, then answer late
              drop                close every client connection
              strict on|off       exception 2 for addresses no map entry covers
              exception CODE|off  answer every request with this exception
              get NAME            print a value as a client would decode it
              quit                stop (exit 0)
            Prefix a command with @DEVICE or @N (1-based, serving order) to aim it at one device.

            Exit codes: 0 after quit, 1 cannot listen, 2 bad input.
            """)

    @Option(name: .long, help: ArgumentHelp("Register map file or folder (repeatable).", valueName: "M"))
    var map: [String]

    @Option(name: .long, help: ArgumentHelp("Listen address for the first device; later devices on the next ports.", valueName: "HOST:PORT"))
    var listen: String?

    @Option(name: .customLong("set"), help: ArgumentHelp("Starting value (repeatable).", valueName: "NAME=VALUE"))
    var sets: [String] = []

    @Option(name: .long, help: "Serve each map this many times (needs --listen), e.g. for benchmarks.")
    var replicas: Int = 1

    @Option(name: .customLong("units-per-port"),
            help: "Serve the devices as gateways do: this many on each port, unit ids 1…N (default 1: a port each).")
    var unitsPerPort: Int = 1

    @Flag(name: .long, help: "Start in strict addressing (see `strict on`).")
    var strict = false

    @Option(name: .long, help: ArgumentHelp("Serve the maps as Modbus RTU devices on this serial port.", valueName: "PATH"))
    var serial: String?

    @Option(name: .long, help: "With --serial: baud rate (default: the first map's, else 19200).")
    var baud: Int?

    @Option(name: .long, help: "With --serial: parity N, E or O (default: the first map's, else E).")
    var parity: String?

    @Option(name: .customLong("data-bits"), help: "With --serial: data bits 7 or 8.")
    var dataBits: Int?

    @Option(name: .customLong("stop-bits"), help: "With --serial: stop bits 1 or 2.")
    var stopBits: Int?

    func validate() throws {
        guard !map.isEmpty else { throw ValidationError("--map is required") }
        guard (1...1000).contains(replicas) else { throw ValidationError("--replicas must be 1…1000") }
        if replicas > 1 && listen == nil { throw ValidationError("--replicas needs --listen HOST:PORT") }
        guard (1...247).contains(unitsPerPort) else { throw ValidationError("--units-per-port must be 1…247") }
        if unitsPerPort > 1 && listen == nil { throw ValidationError("--units-per-port needs --listen HOST:PORT") }
        if let listen, PhysicalCLI.parseEndpoint(listen) == nil {
            throw ValidationError("--listen: expected HOST:PORT, got \(listen)")
        }
        for s in sets where !s.contains("=") { throw ValidationError("--set: expected NAME=VALUE, got \(s)") }
        if serial == nil && (baud != nil || parity != nil || dataBits != nil || stopBits != nil) {
            throw ValidationError("--baud, --parity, --data-bits and --stop-bits need --serial PATH")
        }
        if serial != nil && (listen != nil || replicas > 1) { throw ValidationError("--serial cannot be combined with --listen or --replicas") }
        if let parity, SerialPortSettings.Parity(rawValue: parity.uppercased()) == nil {
            throw ValidationError("--parity: expected N, E or O, got \(parity)")
        }
        if let dataBits, ![7, 8].contains(dataBits) { throw ValidationError("--data-bits must be 7 or 8") }
        if let stopBits, ![1, 2].contains(stopBits) { throw ValidationError("--stop-bits must be 1 or 2") }
        if let baud, !(300...4_000_000).contains(baud) { throw ValidationError("--baud must be 300…4000000") }
    }

    func run() throws {
        PhysicalCLI.capDescriptors()
        PhysicalCLI.unblockTerminationSignals()
        let maps = try PhysicalCLI.loadMaps(map)
        var initial: [String: String] = [:]
        for s in sets {
            let eq = s.firstIndex(of: "=")!
            initial[String(s[..<eq])] = String(s[s.index(after: eq)...])
        }
        if let serial { return try runSerial(maps: maps, path: serial, initial: initial) }
        if listen == nil, let m = maps.first(where: { $0.plc.serial != nil }) {
            PhysicalCLI.err("error: \(m.device) is a serial device (\(m.plc.linkName)): serve it with --serial PATH (the other end of the line), or on TCP with --listen HOST:PORT")
            throw ExitCode(2)
        }
        let served = Array(repeating: maps, count: replicas).flatMap { $0 }
        var sims: [PLCSimulator] = []
        do {
            if let listen, let (host, port) = PhysicalCLI.parseEndpoint(listen) {
                sims = [try PLCSimulator(maps: served, host: host, port: port, initial: initial, strict: strict,
                                         unitsPerPort: unitsPerPort)]
            } else {
                // Each map where it says its PLC is; all in one simulator per distinct host.
                for m in served {
                    sims.append(try PLCSimulator(maps: [m], host: m.plc.host, port: m.plc.port,
                                                 initial: initial.filter { k, _ in k == "status" || m.register(named: k) != nil
                                                     || m.identity.contains { $0.register.name == k } },
                                                 strict: strict))
                }
                for name in initial.keys where !served.contains(where: { m in
                    name == "status" || m.register(named: name) != nil || m.identity.contains { $0.register.name == name } }) {
                    throw SimulatorError("--set \(name): no device has a value named \(name)")
                }
            }
        } catch let e as SimulatorError {
            PhysicalCLI.err("error: \(e)")
            let usage = e.message.hasPrefix("--set") || e.message.contains("expected")
            throw ExitCode(usage ? 2 : 1)
        }
        for sim in sims {
            for e in sim.endpoints {
                let host = e.host.contains(":") ? "[\(e.host)]" : e.host
                // Behind a shared port the unit tells the devices apart, as `--serial` prints it.
                PhysicalCLI.out("listening \(host):\(e.port) " + (unitsPerPort > 1 ? "unit \(e.unit) " : "") + e.device)
            }
        }
        // Commands from stdin; at end of input keep serving until `quit` or a signal.
        while let line = readLine() {
            let command: SimulatorCommand
            do {
                guard let c = try SimulatorCommand.parse(line) else { continue }
                command = c
            } catch {
                PhysicalCLI.err("error: \(error)")
                continue
            }
            // One simulator serves all devices with --listen; otherwise one per map, and a
            // target picks the simulator(s) serving it.
            var targets: [(PLCSimulator, SimulatorCommand)] = sims.map { ($0, command) }
            if sims.count > 1, let t = command.target {
                var untargeted = command
                untargeted.target = nil
                if let n = Int(t), n >= 1, n <= sims.count {
                    targets = [(sims[n - 1], untargeted)]
                } else {
                    targets = sims.filter { $0.endpoints.contains { $0.device == t } }.map { ($0, untargeted) }
                    if targets.isEmpty {
                        PhysicalCLI.err("error: @\(t): no such device")
                        continue
                    }
                }
            }
            var replies: [String] = []
            var firstError: SimulatorError?
            for (sim, c) in targets {
                do {
                    let r = try sim.execute(c)
                    if !r.isEmpty && !replies.contains(r) { replies.append(r) }
                } catch {
                    firstError = firstError ?? error
                }
            }
            if replies.isEmpty, let firstError {
                PhysicalCLI.err("error: \(firstError)")
            } else if !replies.isEmpty {
                PhysicalCLI.out(replies.joined(separator: "\n"))
            }
            if sims.contains(where: \.hasStopped) {
                for sim in sims { sim.stop() }
                return
            }
        }
        sims.first?.waitUntilQuit()
        for sim in sims { sim.stop() }
    }
}

extension SimulateCommand {
    /// `simulate --serial`: every map a unit on one serial port, commands from stdin.
    func runSerial(maps: [DeviceMap], path: String, initial: [String: String]) throws {
        let line = maps.first?.plc.serial
        let settings = SerialPortSettings(
            device: path, baud: baud ?? line?.baud ?? 19200,
            parity: SerialPortSettings.Parity(rawValue: (parity ?? line?.parity.rawValue ?? "E").uppercased()) ?? .even,
            dataBits: dataBits ?? line?.dataBits ?? 8, stopBits: stopBits ?? line?.stopBits ?? 1)
        let sim: SerialSimulator
        do {
            sim = try SerialSimulator(maps: maps, settings: settings, initial: initial, strict: strict)
        } catch {
            PhysicalCLI.err("error: \(error)")
            throw ExitCode(error.message.hasPrefix("--set") ? 2 : 1)
        }
        for s in sim.served { PhysicalCLI.out("listening \(path) unit \(s.unit) \(s.device)") }
        while let text = readLine() {
            do {
                let reply = try sim.execute(text)
                if !reply.isEmpty { PhysicalCLI.out(reply) }
            } catch {
                PhysicalCLI.err("error: \(error)")
            }
            if sim.hasStopped { return }
        }
        sim.waitUntilQuit()
        sim.stop()
    }
}

/// `tibet-twin read`: the integrator's commissioning check.
struct ReadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read",
        abstract: "Poll a map's PLC once (or every poll_ms) and print each value with its quality, the status and identity.",
        discussion: """
            --json prints {"device","time","status","identity","values":{NAME:{"value","unit","quality"}}} \
            (one object per device and poll, one per line), plus status_raw, status_quality and poll_error.
            Exit codes: 0 every value, the status and identity are good; 1 the PLC could not be read \
            (or a value, the status or identity is bad); 2 bad input.
            """)

    @Option(name: .long, help: ArgumentHelp("Register map file or folder (repeatable).", valueName: "M"))
    var map: [String]

    @Flag(name: .long, help: "Print JSON (see docs/cli.md).")
    var json = false

    @Flag(name: .long, help: "Poll every poll_ms until interrupted, one line per poll.")
    var watch = false

    @Option(name: .long, help: "With --watch: stop after this many polls per device.")
    var count: Int?

    @Option(name: .long, help: ArgumentHelp("Read this address instead of the map's plc host:port.", valueName: "HOST:PORT"))
    var plc: String?

    @Option(name: .customLong("timeout-ms"), help: ArgumentHelp("Answer timeout instead of the map's timeout_ms (a slow commissioning link).", valueName: "MS"))
    var timeoutMs: Int?

    func validate() throws {
        guard !map.isEmpty else { throw ValidationError("--map is required") }
        if let plc, PhysicalCLI.parseEndpoint(plc) == nil { throw ValidationError("--plc: expected HOST:PORT, got \(plc)") }
        if let timeoutMs, !(1...60_000).contains(timeoutMs) { throw ValidationError("--timeout-ms must be 1…60000, got \(timeoutMs)") }
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        if count != nil && !watch { throw ValidationError("--count needs --watch") }
    }

    func run() async throws {
        PhysicalCLI.capDescriptors()
        PhysicalCLI.unblockTerminationSignals()
        var maps = try PhysicalCLI.loadMaps(map)
        if let plc, let (host, port) = PhysicalCLI.parseEndpoint(plc) {
            // Another Modbus/TCP address: also for a map of a serial device or an RTU gateway.
            for i in maps.indices {
                maps[i].plc.host = host
                maps[i].plc.port = port
                maps[i].plc.serial = nil
                maps[i].plc.framing = .tcp
            }
        }
        if let timeoutMs {
            for i in maps.indices { maps[i].plc.timeoutMs = timeoutMs }
        }
        let byDevice = Dictionary(maps.map { ($0.device, $0) }, uniquingKeysWith: { a, _ in a })
        if !watch {
            let states = PhysicalReads.readOnceTimed(maps: maps)
            var healthy = true
            for ((s, rtt), m) in zip(states, maps) {
                PhysicalCLI.out(json ? ReadReport.json(s, map: m).canonical : ReadReport.text(s, map: m))
                if !json, let rtt, m.plc.serial == nil {
                    PhysicalCLI.out("round trip \(String(format: "%.2f", rtt)) ms per request (plc.rtt_ms for the link budget of maps validate)")
                }
                if !PhysicalReads.isHealthy(s) { healthy = false }
            }
            if !healthy { throw ExitCode(1) }
            return
        }
        let (stream, continuation) = AsyncStream.makeStream(of: PhysicalState.self, bufferingPolicy: .bufferingNewest(256))
        let poller = Poller(maps: maps) { continuation.yield($0) }
        try poller.start()
        defer { poller.stop() }
        var seen: [String: Int] = [:]
        for await s in stream {
            guard let m = byDevice[s.device] else { continue }
            PhysicalCLI.out(json ? ReadReport.json(s, map: m).canonical : Self.line(s, map: m))
            seen[s.device, default: 0] += 1
            if let count, maps.allSatisfy({ (seen[$0.device] ?? 0) >= count }) { break }
        }
    }

    /// One line per poll for --watch.
    static func line(_ s: PhysicalState, map: DeviceMap) -> String {
        var parts = [RFC3339.format(wallNs: s.time.wallNs), s.device, "status=\(s.status ?? "?")", "identity=\(ReadReport.identityWord(s.identity))"]
        for r in map.registers {
            let reading = s.values[r.name] ?? Reading(value: nil, quality: .badComm)
            var p = "\(r.name)=\(reading.value?.text(precision: r.precision) ?? "-")"
            if !reading.quality.isGood { p += "(\(reading.quality))" }
            parts.append(p)
        }
        if let e = s.pollError { parts.append("error: \(e)") }
        return parts.joined(separator: " ")
    }
}
