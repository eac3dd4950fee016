import PunaCore

/// `puna devices`: the Vulkan devices and the features Puna's shader tiers care about.
enum DevicesCommand {
    static let specs: [FlagSpec] = [
        FlagSpec(names: ["--json"], value: nil, help: "print {\"devices\":[…]}"),
        helpFlag,
    ]

    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "devices", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna devices [--json]",
                         summary: "List Vulkan devices (index for --device, type, API version, memory, subgroup size, optional features, shared memory).",
                         specs: specs))
            return 0
        }
        guard args.positionals.isEmpty else { throw PunaError("'puna devices' takes no positional argument '\(args.positionals[0])'") }
        let devices = try VulkanDevice.all()
        if args.has("--json") {
            var j = JSONWriter()
            j.beginObject()
            j.key("devices")
            j.beginArray()
            for d in devices {
                j.beginObject()
                j.field("index", d.index)
                j.field("name", d.name)
                j.field("type", d.type)
                j.field("api_version", d.apiVersion)
                j.field("usable", d.usable)
                j.field("tier", d.tier)
                j.key("tiers")
                j.beginArray()
                for t in d.tiers {
                    j.beginObject(); j.field("name", t.name); j.field("supported", t.missing.isEmpty)
                    if !t.missing.isEmpty { j.field("missing", t.missing) }
                    j.endObject()
                }
                j.endArray()
                j.key("heaps")
                j.beginArray()
                for h in d.heaps {
                    j.beginObject(); j.field("bytes", h.bytes); j.field("device_local", h.deviceLocal); j.endObject()
                }
                j.endArray()
                j.field("subgroup_size", d.subgroupSize)
                j.field("subgroup_arithmetic", d.subgroupArithmetic)
                j.field("shader_float16", d.shaderFloat16)
                j.field("shader_int8", d.shaderInt8)
                j.field("integer_dot_product", d.integerDotProduct)
                j.field("integer_dot_product_accelerated", d.integerDotProductAccelerated)
                j.field("storage_buffer_16bit", d.storageBuffer16Bit)
                j.field("storage_buffer_8bit", d.storageBuffer8Bit)
                j.field("external_memory_host", d.externalMemoryHost)
                j.field("shared_memory_bytes", d.sharedMemoryBytes)
                j.field("max_workgroup_invocations", d.maxWorkgroupInvocations)
                j.field("max_storage_buffer_range", d.maxStorageBufferRange)
                j.endObject()
            }
            j.endArray()
            j.endObject()
            outLine(j.string)
            return 0
        }
        if devices.isEmpty { outLine("no Vulkan devices") }
        func yes(_ b: Bool) -> String { b ? "yes" : "no" }
        for d in devices {
            outLine("\(d.index): \(d.name)  [\(d.type), Vulkan \(d.apiVersion)]\(d.usable ? "" : "  (not usable: needs Vulkan 1.1 compute)")")
            var heaps: [String] = []
            for h in d.heaps { heaps.append(formatBytes(h.bytes) + (h.deviceLocal ? " device-local" : " host")) }
            outLine("   memory heaps: \(heaps.joined(separator: ", "))")
            outLine("   subgroup size \(d.subgroupSize), subgroup arithmetic \(yes(d.subgroupArithmetic)), shared memory \(formatBytes(d.sharedMemoryBytes)), max workgroup \(d.maxWorkgroupInvocations)")
            let dot = d.integerDotProduct ? (d.integerDotProductAccelerated ? "yes (accelerated)" : "yes (not accelerated)") : "no"
            outLine("   fp16 \(yes(d.shaderFloat16)), int8 \(yes(d.shaderInt8)), int dot \(dot), 16-bit storage \(yes(d.storageBuffer16Bit)), 8-bit storage \(yes(d.storageBuffer8Bit)), host-memory import \(yes(d.externalMemoryHost))")
            for t in d.tiers {
                var line = t.missing.isEmpty ? "available" : "needs \(t.missing)"
                if t.missing.isEmpty && t.name == "int8" && !d.integerDotProductAccelerated {
                    line += " (not picked by default: the driver emulates the dot product)"
                }
                outLine("   tier \(t.name): " + line)
            }
            outLine("   Puna shader tier: \(d.tier) (PUNA_VK_TIER=\(VulkanDevice.tierNames.joined(separator: "|")) forces one)")
        }
        return 0
    }
}
