import PunaCore

/// --backend, --device, --gpu-layers: where the forward pass runs (PunaCore/Backends/Vulkan/Vulkan.swift).
enum BackendFlags {
    static let specs: [FlagSpec] = [
        FlagSpec(names: ["--backend"], value: "NAME", help: "cpu (default) or vulkan (without a usable device: a note, then the CPU)"),
        FlagSpec(names: ["--device"], value: "N", help: "Vulkan device index from 'puna devices' (default: the best one)"),
        FlagSpec(names: ["--gpu-layers", "-ngl", "--n-gpu-layers"], value: "N",
                 help: "layers on the GPU, from the first; the rest run on the CPU (default: all)"),
    ]

    /// Moves the model to the requested backend (after adapters are applied: weights upload here)
    /// and prints what the backend set-up says on stderr.
    static func apply(_ args: ParsedArguments, model: LanguageModel) throws(PunaError) {
        let name = args.string("--backend") ?? "cpu"
        let device = try args.int("--device", range: 0...255)
        let layers = try args.int("--gpu-layers", range: 0...100_000)
        switch name {
        case "cpu":
            if device != nil || layers != nil { throw PunaError("flags --device and --gpu-layers need --backend vulkan") }
            return
        case "vulkan":
            break
        default:
            throw PunaError("flag --backend: unknown backend '\(name)' (choose cpu or vulkan)")
        }
        try model.useVulkan(VulkanOptions(device: device ?? -1, gpuLayers: layers ?? -1))
        if let note = model.backendNote { errLine("puna: \(note)") }
    }
}
