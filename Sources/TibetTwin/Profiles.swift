/// The industry profiles (docs/decision-rule.md): defaults for a device's timing limits, and what an
/// integrator should expect to find in that sector.
public enum ProfileID: String, Sendable, Hashable, CaseIterable, Codable {
    case port, manufacturing, energy, steel, semiconductor, building
}

/// One industry profile, as `tibet-twin profiles --json` prints it.
public struct IndustryProfile: Sendable, Hashable, Codable {
    public var id: ProfileID
    public var sector: String
    /// One line: what kind of plant the profile is for.
    public var description: String
    /// Default `max_drift_ms` (and so `max_age_ms`) for devices of this profile.
    public var maxDriftMs: Int
    public var safetyCritical: Bool
    public var typicalSensors: [String]
    public var typicalAssets: [String]
    public var compliance: [String]
    /// Why the drift limit is what it is.
    public var notes: String

    enum CodingKeys: String, CodingKey {
        case id, sector, description, notes
        case maxDriftMs = "max_drift_ms"
        case safetyCritical = "safety_critical"
        case typicalSensors = "typical_sensors"
        case typicalAssets = "typical_assets"
        case compliance
    }

    /// The full record as `tibet-twin profiles --json` prints it (`name` is the id, as the
    /// original printed it).
    public var json: JSONValue {
        [
            "name": .string(id.rawValue),
            "sector": .string(sector),
            "description": .string(description),
            "max_drift_ms": .int(Int64(maxDriftMs)),
            "safety_critical": .bool(safetyCritical),
            "typical_sensors": .array(typicalSensors.map { .string($0) }),
            "typical_assets": .array(typicalAssets.map { .string($0) }),
            "compliance": .array(compliance.map { .string($0) }),
            "notes": .string(notes),
        ]
    }

    /// The profile record for an id.
    public static func named(_ id: ProfileID) -> IndustryProfile {
        all.first { $0.id == id }!
    }

    /// All six profiles, in the order `tibet-twin profiles` prints them.
    public static let all: [IndustryProfile] = [
        IndustryProfile(
            id: .port, sector: "Ports & logistics", description: "Port and terminal cranes, container handling", maxDriftMs: 200, safetyCritical: true,
            typicalSensors: ["position", "load", "wind_speed", "sway_angle", "hoist_brake"],
            typicalAssets: ["ship-to-shore crane", "RTG crane", "straddle carrier", "AGV"],
            compliance: ["EN 13001", "EN 15011", "ISO 4301", "IEC 62443"],
            notes: "A crane moves metres per second with tonnes on the hook: a twin 200 ms behind is a load in the wrong place."),
        IndustryProfile(
            id: .manufacturing, sector: "Discrete manufacturing", description: "Robot cells, CNC machines, presses, conveyors", maxDriftMs: 100, safetyCritical: true,
            typicalSensors: ["joint_angle", "tcp_position", "torque", "light_curtain", "door_interlock"],
            typicalAssets: ["robot cell", "CNC machine", "press", "conveyor"],
            compliance: ["ISO 10218", "ISO 13849", "IEC 62061", "IEC 62443"],
            notes: "Robots and presses move fast and close to people: 100 ms is a few centimetres of travel."),
        IndustryProfile(
            id: .energy, sector: "Energy generation & grid", description: "Wind and gas turbines, substations, battery storage", maxDriftMs: 500, safetyCritical: true,
            typicalSensors: ["rotor_rpm", "pitch_angle", "power_kw", "vibration", "nacelle_temp"],
            typicalAssets: ["wind turbine", "gas turbine", "substation breaker", "battery storage"],
            compliance: ["IEC 61400", "IEC 61850", "NERC CIP", "IEC 62443"],
            notes: "SCADA polls at 0.5-1 s; grid assets change state slower than machines, but switch with high energy."),
        IndustryProfile(
            id: .steel, sector: "Steel & heavy industry", description: "Rolling mills, casters, furnaces, ladle cranes", maxDriftMs: 300, safetyCritical: true,
            typicalSensors: ["roll_gap", "strip_temp", "roll_force", "strip_speed", "coolant_flow"],
            typicalAssets: ["hot strip mill", "ladle crane", "continuous caster", "furnace"],
            compliance: ["EN 60204-1", "ISO 13849", "IEC 61511", "IEC 62443"],
            notes: "Molten metal and heavy rolls: process states change within a few hundred ms."),
        IndustryProfile(
            id: .semiconductor, sector: "Semiconductor fabrication", description: "Wafer handling, etch and deposition tools", maxDriftMs: 50, safetyCritical: true,
            typicalSensors: ["chamber_pressure", "rf_power", "gas_flow", "wafer_temp", "robot_position"],
            typicalAssets: ["etch tool", "deposition chamber", "wafer handler", "lithography stepper"],
            compliance: ["SEMI S2", "SEMI E10", "SEMI E30 (GEM)", "IEC 62443"],
            notes: "Wafer robots and plasma steps are timed to tens of ms; a stale twin ruins lots or tools."),
        IndustryProfile(
            id: .building, sector: "Building automation", description: "HVAC, chillers, boilers, dampers", maxDriftMs: 5000, safetyCritical: false,
            typicalSensors: ["supply_temp", "return_temp", "damper_position", "co2_ppm", "fan_speed"],
            typicalAssets: ["air handling unit", "chiller", "boiler", "VAV box"],
            compliance: ["EN 15232", "ISO 16484", "BACnet (ISO 16484-5)", "IEC 62443"],
            notes: "Not safety critical: comfort and energy, where seconds of lag are normal."),
    ]
}
