import Crypto
import Modbus
import OPCUA
import TibetTwin

/// The inputs `make fuzz` throws at tibet-twin's three readers of untrusted bytes, and what
/// must hold for every input besides "no crash, no hang" (libFuzzer's `-timeout` catches a hang):
///
/// - `yaml`: register maps and the config file (`MapLoader`, `ApplianceConfig`): every error
///   names a line and column inside the file.
/// - `twin`: a twin feed line (`TwinLineParser`): an accepted line names a known device, its
///   values are known names with finite numbers, its `ts` is not ahead of the receive time by
///   more than the skew allowed; a line for a keyed device is accepted only with a valid
///   signature.
/// - `modbus`: the interlock's request framer and judge (`ModbusRequestCheck`): a frame is never
///   longer than the input or than Modbus/TCP allows, and a read it lets through lies inside the
///   served tables.
/// - `opcua`: the OPC UA binary decoder (what a server sends): the first byte picks Variant,
///   DataValue, ExpandedNodeId, DiagnosticInfo or a NodeId text; the reader never ends past the
///   input, and what decodes encodes back to bytes that decode and encode to the same bytes.
enum FuzzTarget: String, CaseIterable {
    case yaml, twin, modbus, opcua

    /// Runs one input; a violated invariant stops the process (libFuzzer then saves the input).
    func run(_ bytes: UnsafeRawBufferPointer) {
        switch self {
        case .yaml: FuzzTarget.yaml(bytes)
        case .twin: FuzzTarget.twin(bytes)
        case .modbus: FuzzTarget.modbus(bytes)
        case .opcua: FuzzTarget.opcua(bytes)
        }
    }

    static func yaml(_ bytes: UnsafeRawBufferPointer) {
        guard let text = String(validating: bytes, as: UTF8.self) else { return }
        // YAML breaks lines at LF, CR LF and a lone CR (and NEL, LS, PS in YAML 1.1): count as
        // generously as the reader may; the line after the last is where an error at the end of
        // the input (an unclosed `[`) is reported.
        var lines = 1
        var previous: Unicode.Scalar = " "
        for u in text.unicodeScalars {
            switch u {
            case "\n": if previous != "\r" { lines += 1 }
            case "\r", "\u{85}", "\u{2028}", "\u{2029}": lines += 1
            default: break
            }
            previous = u
        }
        func checkIssues(_ e: MapErrors) {
            for issue in e.issues {
                let l = issue.location
                require(l.line >= 1 && l.line <= lines + 1 && l.column >= 1, "issue outside the file: \(issue)")
            }
        }
        do { _ = try MapLoader.parse(yaml: text, file: "fuzz.yaml") } catch { checkIssues(error) }
        do { _ = try ApplianceConfig.parse(yaml: text, file: "fuzz.yaml") } catch { checkIssues(error) }
    }

    /// A fixed clock: 2026-11-26T14:32:01Z, a second after the seed lines' `ts`.
    static let received = ClockReading(monotonicNs: 5_000_000_000, wallNs: 1_795_703_521_000_000_000)

    /// One unsigned device (the seed lines' crane) and one that requires a signature.
    static let parser: TwinLineParser = {
        let key = try! Curve25519.Signing.PrivateKey(rawRepresentation: [UInt8](repeating: 7, count: 32))
        return TwinLineParser(rules: [
            TwinDeviceRules(device: "crane-01", valueNames: ["position_x", "load_kg", "wind_speed", "hoist_locked"],
                            maxSkewMs: 1000, key: nil),
            TwinDeviceRules(device: "press-07", valueNames: ["force_kn", "ram_mm"], maxSkewMs: 1000,
                            key: TwinPublicKey(key.publicKey)),
        ])
    }()

    static func twin(_ bytes: UnsafeRawBufferPointer) {
        switch parser.parse(bytes: bytes, received: received) {
        case .accepted(let state, let unknown):
            guard let rules = parser.devices[state.device] else { fail("accepted an unknown device \(state.device)") }
            require(rules.key == nil || state.signature == .valid, "keyed device accepted without a valid signature")
            for (name, v) in state.values {
                require(rules.valueNames.contains(name), "accepted unknown value \(name)")
                require(v.isFinite, "accepted a non-finite value \(name)=\(v)")
            }
            require(unknown.allSatisfy { !rules.valueNames.contains($0) }, "a known value reported as unknown")
            require(state.tsNs - received.wallNs <= Int64(rules.maxSkewMs * 1e6), "accepted a ts from the future")
        case .identityFailure(let state, _):
            require(state.isIdentityFailure, "an identity failure whose state does not say so")
        case .dropped:
            break
        }
    }

    static func modbus(_ bytes: UnsafeRawBufferPointer) {
        // The framer sees a connection's input as it accumulates; judge every frame in it.
        var rest = bytes
        while true {
            switch ModbusRequestCheck.framing(rest) {
            case .incomplete, .malformed:
                return
            case .frame(let n):
                require(n >= ModbusRequestCheck.headerLength + 1 && n <= rest.count
                        && n <= ModbusRequestCheck.maxFrameLength, "frame length \(n) of \(rest.count) bytes")
                let frame = UnsafeRawBufferPointer(rebasing: rest[0..<n])
                let sizes = (coils: 16, discrete: 16, holding: 40, input: 0)
                if case .read(let table, let address, let count) = ModbusRequestCheck.decide(frame, unit: 1, sizes: sizes) {
                    let size: Int = switch table {
                    case .coil: sizes.coils
                    case .discrete: sizes.discrete
                    case .holding: sizes.holding
                    case .input: sizes.input
                    }
                    require(count >= 1 && address >= 0 && address + count <= size, "read outside the tables")
                }
                rest = UnsafeRawBufferPointer(rebasing: rest[n...])
            }
        }
    }

    static func opcua(_ bytes: UnsafeRawBufferPointer) {
        guard let selector = bytes.first else { return }
        let input = Array(bytes.dropFirst())
        let limits = UAEncodingLimits(maxStringBytes: 4096, maxByteStringBytes: 4096, maxArrayLength: 4096, maxDepth: 8)
        var r = UABinaryReader(input, limits: limits)
        /// Decodes with `read`, re-encodes with `write`: the encoding is stable from then on.
        func stable<T>(_ read: (inout UABinaryReader) throws(UADecodingError) -> T, _ write: (inout UABinaryWriter, T) -> Void) {
            guard let value = try? read(&r) else { return }
            require(r.position <= input.count, "reader ended at \(r.position) of \(input.count) bytes")
            var w1 = UABinaryWriter()
            write(&w1, value)
            var again = UABinaryReader(w1.bytes, limits: limits)
            guard let second = try? read(&again) else { fail("re-encoded value does not decode: \(w1.bytes)") }
            require(again.remaining == 0, "re-encoded value leaves \(again.remaining) bytes")
            var w2 = UABinaryWriter()
            write(&w2, second)
            require(w1.bytes == w2.bytes, "encoding not stable: \(w1.bytes) then \(w2.bytes)")
        }
        switch selector % 5 {
        case 0: stable({ (r: inout UABinaryReader) throws(UADecodingError) in try r.readVariant() }, { $0.writeVariant($1) })
        case 1: stable({ (r: inout UABinaryReader) throws(UADecodingError) in try r.readDataValue() }, { $0.writeDataValue($1) })
        case 2: stable({ (r: inout UABinaryReader) throws(UADecodingError) in try r.readExpandedNodeId() }, { $0.writeExpandedNodeId($1) })
        case 3:
            if (try? r.skipDiagnosticInfo()) != nil { require(r.position <= input.count, "DiagnosticInfo skipped past the end") }
        default:
            guard let text = String(validating: input, as: UTF8.self), let id = try? NodeIdText(parsing: text) else { return }
            guard let back = try? NodeIdText(parsing: id.description) else { fail("\(id) does not parse back") }
            require(back == id, "\(text) → \(id) → \(back)")
        }
    }

    static func require(_ ok: Bool, _ what: @autoclosure () -> String) {
        if !ok { fail(what()) }
    }

    static func fail(_ what: String) -> Never {
        fatalError("fuzz invariant violated: \(what)")
    }
}
