// Vulkan plumbing for Puna: loader, device query, memory, pipelines, command recording.
// See include/puna_vulkan.h for the contract. Decisions, briefly:
// - Headers: Puna's own vk_api.h (no build-time dependency on libvulkan-dev, so every build carries
//   the backend); every entry point comes from vkGetInstanceProcAddr / vkGetDeviceProcAddr after
//   dlopen("libvulkan.so.1"), and a machine without libvulkan or a driver gets a run-time error.
// - One descriptor-set layout (5 storage buffers) and one pipeline layout (128 bytes of push
//   constants) serve every shader; descriptor sets are cached by their bindings, which repeat
//   every token, so steady-state decoding allocates nothing.
// - Memory: blocks ("arenas") each with one VkBuffer covering it; small buffers are carved out of
//   shared 64 MiB blocks, big ones (weights, KV cache) get their own. Weights sit in device-local
//   memory on discrete GPUs (uploaded through staging) and in host-visible memory elsewhere, or in
//   the imported file mapping itself.
#include "puna_vulkan.h"
#include "bnb_layout.h"
#include "generated/shaders.h"
#include "puna_bnb.h"
#include "puna_kernels.h"
#include "puna_quants.h"
#include "vk_api.h"

#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int puna_vk_shader_count(void) { return (int)PUNA_VK_SPIRV_COUNT; }
const char *puna_vk_shader_name(int i) { return i >= 0 && i < (int)PUNA_VK_SPIRV_COUNT ? puna_vk_spirv_table[i].name : NULL; }
int puna_vk_shader_tier(int i) { return i >= 0 && i < (int)PUNA_VK_SPIRV_COUNT ? puna_vk_spirv_table[i].tier : -1; }
const uint32_t *puna_vk_shader_code(int i, uint32_t *words) {
    if (i < 0 || i >= (int)PUNA_VK_SPIRV_COUNT) { if (words) *words = 0; return NULL; }
    if (words) *words = puna_vk_spirv_table[i].words;
    return puna_vk_spirv_table[i].code;
}

const char *puna_vk_device_type_name(int type) {
    switch (type) {
    case PUNA_VK_DEVICE_INTEGRATED: return "integrated";
    case PUNA_VK_DEVICE_DISCRETE: return "discrete";
    case PUNA_VK_DEVICE_VIRTUAL: return "virtual";
    case PUNA_VK_DEVICE_CPU: return "cpu";
    default: return "other";
    }
}

// ---- loader ------------------------------------------------------------------------------------
// Entry points, by the level they are fetched at.
#define PUNA_VK_GLOBAL_FUNCS(X) \
    X(vkCreateInstance) X(vkEnumerateInstanceExtensionProperties)
#define PUNA_VK_INSTANCE_FUNCS(X) \
    X(vkDestroyInstance) X(vkEnumeratePhysicalDevices) X(vkGetPhysicalDeviceProperties) \
    X(vkGetPhysicalDeviceProperties2) X(vkGetPhysicalDeviceFeatures2) X(vkGetPhysicalDeviceMemoryProperties) \
    X(vkGetPhysicalDeviceQueueFamilyProperties) X(vkEnumerateDeviceExtensionProperties) X(vkCreateDevice) \
    X(vkGetDeviceProcAddr)
#define PUNA_VK_DEVICE_FUNCS(X) \
    X(vkDestroyDevice) X(vkGetDeviceQueue) X(vkCreateBuffer) X(vkDestroyBuffer) \
    X(vkGetBufferMemoryRequirements) X(vkAllocateMemory) X(vkFreeMemory) X(vkBindBufferMemory) \
    X(vkMapMemory) X(vkCreateShaderModule) X(vkDestroyShaderModule) X(vkCreateDescriptorSetLayout) \
    X(vkDestroyDescriptorSetLayout) X(vkCreatePipelineLayout) X(vkDestroyPipelineLayout) \
    X(vkCreateComputePipelines) X(vkDestroyPipeline) X(vkCreateDescriptorPool) X(vkDestroyDescriptorPool) \
    X(vkAllocateDescriptorSets) X(vkUpdateDescriptorSets) X(vkCreateCommandPool) X(vkDestroyCommandPool) \
    X(vkAllocateCommandBuffers) X(vkBeginCommandBuffer) X(vkEndCommandBuffer) X(vkResetCommandBuffer) \
    X(vkCmdBindPipeline) X(vkCmdBindDescriptorSets) X(vkCmdPushConstants) X(vkCmdDispatch) \
    X(vkCmdPipelineBarrier) X(vkCmdCopyBuffer) X(vkCreateFence) X(vkDestroyFence) X(vkResetFences) \
    X(vkWaitForFences) X(vkQueueSubmit) X(vkDeviceWaitIdle)

#define DECLARE(name) static PFN_##name p_##name;
static PFN_vkGetInstanceProcAddr p_vkGetInstanceProcAddr;
PUNA_VK_GLOBAL_FUNCS(DECLARE)
PUNA_VK_INSTANCE_FUNCS(DECLARE)
#undef DECLARE

static void *g_library;
static VkInstance g_instance;
static int g_loaded = -1;               // -1 not tried, 0 failed, 1 ok
static char g_load_error[512];
static VkPhysicalDevice g_physical[16];
static puna_vk_device_info g_info[16];
static uint32_t g_physical_count;

const char *puna_vk_load_error(void) { return g_load_error; }

static int has_extension(const VkExtensionProperties *list, uint32_t n, const char *name) {
    for (uint32_t i = 0; i < n; i++) if (strcmp(list[i].extensionName, name) == 0) return 1;
    return 0;
}

// Properties and features of one physical device, asked through the *2 queries with only the
// structures its version or extensions define chained in.
static void query_device(VkPhysicalDevice pd, puna_vk_device_info *info) {
    memset(info, 0, sizeof *info);
    VkPhysicalDeviceProperties props;
    p_vkGetPhysicalDeviceProperties(pd, &props);
    snprintf(info->name, sizeof info->name, "%s", props.deviceName);
    switch (props.deviceType) {
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: info->type = PUNA_VK_DEVICE_INTEGRATED; break;
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: info->type = PUNA_VK_DEVICE_DISCRETE; break;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: info->type = PUNA_VK_DEVICE_VIRTUAL; break;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: info->type = PUNA_VK_DEVICE_CPU; break;
    default: info->type = PUNA_VK_DEVICE_OTHER; break;
    }
    info->api_version = props.apiVersion;
    info->driver_version = props.driverVersion;
    info->vendor_id = props.vendorID;
    info->device_id = props.deviceID;
    info->max_shared_memory = props.limits.maxComputeSharedMemorySize;
    info->max_workgroup_invocations = props.limits.maxComputeWorkGroupInvocations;
    info->max_push_constants = props.limits.maxPushConstantsSize;
    info->max_storage_buffer_range = props.limits.maxStorageBufferRange;
    info->max_allocation_size = 1ull << 30;   // the Vulkan 1.1 minimum; refined below

    VkPhysicalDeviceMemoryProperties mem;
    p_vkGetPhysicalDeviceMemoryProperties(pd, &mem);
    info->heap_count = mem.memoryHeapCount < PUNA_VK_MAX_HEAPS ? mem.memoryHeapCount : PUNA_VK_MAX_HEAPS;
    for (uint32_t i = 0; i < info->heap_count; i++) {
        info->heap_size[i] = mem.memoryHeaps[i].size;
        info->heap_device_local[i] = (mem.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) != 0;
    }

    uint32_t n_ext = 0;
    p_vkEnumerateDeviceExtensionProperties(pd, NULL, &n_ext, NULL);
    VkExtensionProperties *ext = calloc(n_ext ? n_ext : 1, sizeof *ext);
    if (ext) p_vkEnumerateDeviceExtensionProperties(pd, NULL, &n_ext, ext);
    else n_ext = 0;
    uint32_t version = VK_API_VERSION_MINOR(props.apiVersion) + 100 * VK_API_VERSION_MAJOR(props.apiVersion);
    int v12 = version >= 102;
    info->external_memory_host = has_extension(ext, n_ext, VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME);

    // Everything below needs the 1.1 queries; a 1.0 device is listed but not usable.
    {
        uint32_t nq = 0;
        p_vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, NULL);
        VkQueueFamilyProperties q[32];
        if (nq > 32) nq = 32;
        p_vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, q);
        int compute = 0;
        for (uint32_t i = 0; i < nq; i++) if (q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) compute = 1;
        info->usable = compute && version >= 101;
    }
    if (version < 101) { free(ext); return; }

    VkPhysicalDeviceSubgroupProperties subgroup = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceMaintenance3Properties maint3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES,
                                                     .pNext = &subgroup};
    VkPhysicalDeviceProperties2 props2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &maint3};
    p_vkGetPhysicalDeviceProperties2(pd, &props2);
    info->subgroup_size = subgroup.subgroupSize;
    info->subgroup_arithmetic = (subgroup.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                                (subgroup.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT) &&
                                (subgroup.supportedOperations & VK_SUBGROUP_FEATURE_BASIC_BIT);
    if (maint3.maxMemoryAllocationSize) info->max_allocation_size = maint3.maxMemoryAllocationSize;

    VkPhysicalDevice16BitStorageFeatures storage16 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
    VkPhysicalDeviceShaderFloat16Int8Features f16i8 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES};
    VkPhysicalDevice8BitStorageFeatures storage8 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES};
    VkPhysicalDeviceShaderIntegerDotProductFeatures dot = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES};
    VkPhysicalDeviceFeatures2 features = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &storage16};
    void **tail = &storage16.pNext;
    if (v12 || has_extension(ext, n_ext, VK_KHR_SHADER_FLOAT16_INT8_EXTENSION_NAME)) { *tail = &f16i8; tail = &f16i8.pNext; }
    if (v12 || has_extension(ext, n_ext, VK_KHR_8BIT_STORAGE_EXTENSION_NAME)) { *tail = &storage8; tail = &storage8.pNext; }
    // The instance asks for Vulkan 1.1, so 1.2/1.3 features are only enabled through their extensions.
    int dot_ext = has_extension(ext, n_ext, VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME);
    if (dot_ext) { *tail = &dot; tail = &dot.pNext; }
    p_vkGetPhysicalDeviceFeatures2(pd, &features);
    if (dot_ext) {
        VkPhysicalDeviceShaderIntegerDotProductProperties dot_props = {
            .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_PROPERTIES};
        VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &dot_props};
        p_vkGetPhysicalDeviceProperties2(pd, &p2);
        info->integer_dot_product_accelerated = dot_props.integerDotProduct4x8BitPackedSignedAccelerated;
    }
    info->storage_buffer_16bit = storage16.storageBuffer16BitAccess;
    info->shader_float16 = f16i8.shaderFloat16;
    info->shader_int8 = f16i8.shaderInt8;
    info->shader_float64 = features.features.shaderFloat64;
    info->storage_buffer_8bit = storage8.storageBuffer8BitAccess;
    info->integer_dot_product = dot_ext && dot.shaderIntegerDotProduct;
    free(ext);
}

int puna_vk_load(void) {
    if (g_loaded >= 0) return g_loaded;
    g_loaded = 0;
    g_library = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!g_library) g_library = dlopen("libvulkan.so", RTLD_NOW | RTLD_LOCAL);
    if (!g_library) {
        snprintf(g_load_error, sizeof g_load_error, "libvulkan.so.1 not found (install libvulkan1 and a driver, e.g. mesa-vulkan-drivers)");
        return 0;
    }
    p_vkGetInstanceProcAddr = (PFN_vkGetInstanceProcAddr)dlsym(g_library, "vkGetInstanceProcAddr");
    if (!p_vkGetInstanceProcAddr) {
        snprintf(g_load_error, sizeof g_load_error, "libvulkan.so.1 has no vkGetInstanceProcAddr");
        return 0;
    }
#define LOAD_GLOBAL(name) p_##name = (PFN_##name)p_vkGetInstanceProcAddr(NULL, #name);
    PUNA_VK_GLOBAL_FUNCS(LOAD_GLOBAL)
#undef LOAD_GLOBAL
    PFN_vkEnumerateInstanceVersion enumerate_version =
        (PFN_vkEnumerateInstanceVersion)p_vkGetInstanceProcAddr(NULL, "vkEnumerateInstanceVersion");
    uint32_t instance_version = VK_API_VERSION_1_0;
    if (enumerate_version) enumerate_version(&instance_version);
    if (!p_vkCreateInstance || instance_version < VK_API_VERSION_1_1) {
        snprintf(g_load_error, sizeof g_load_error, "the Vulkan loader supports only Vulkan 1.0; Puna needs 1.1");
        return 0;
    }
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .pApplicationName = "puna",
                             .pEngineName = "puna", .apiVersion = VK_API_VERSION_1_1};
    VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app};
    VkResult r = p_vkCreateInstance(&ci, NULL, &g_instance);
    if (r != VK_SUCCESS) {
        snprintf(g_load_error, sizeof g_load_error, "vkCreateInstance failed (VkResult %d): no Vulkan driver installed?", (int)r);
        return 0;
    }
#define LOAD_INSTANCE(name) p_##name = (PFN_##name)p_vkGetInstanceProcAddr(g_instance, #name); \
    if (!p_##name) { snprintf(g_load_error, sizeof g_load_error, "Vulkan instance lacks %s", #name); return 0; }
    PUNA_VK_INSTANCE_FUNCS(LOAD_INSTANCE)
#undef LOAD_INSTANCE
    uint32_t n = 16;
    r = p_vkEnumeratePhysicalDevices(g_instance, &n, g_physical);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
        snprintf(g_load_error, sizeof g_load_error, "vkEnumeratePhysicalDevices failed (VkResult %d)", (int)r);
        return 0;
    }
    g_physical_count = n;
    for (uint32_t i = 0; i < n; i++) query_device(g_physical[i], &g_info[i]);
    if (n == 0) snprintf(g_load_error, sizeof g_load_error, "Vulkan found no device");
    g_loaded = 1;
    return 1;
}

int puna_vk_device_count(void) { return puna_vk_load() ? (int)g_physical_count : 0; }

int puna_vk_device_query(int index, puna_vk_device_info *out) {
    if (!puna_vk_load() || index < 0 || index >= (int)g_physical_count) return -1;
    *out = g_info[index];
    return 0;
}

// ---- context -------------------------------------------------------------------------------------
#define BINDINGS 5
#define PUSH_BYTES 128
#define SHARED_ARENA_BYTES (64ull << 20)
#define SUBALLOC_ALIGN 256ull
#define STAGING_BYTES (16ull << 20)

typedef struct {
    VkDeviceMemory memory;
    VkBuffer buffer;
    uint64_t size, used;
    void *mapped;            // host address when host-visible (for imports: the imported range)
    int memory_kind;         // PUNA_VK_MEMORY_*
    int dedicated, imported, live;
} arena;

typedef struct {
    const char *name;        // variant name in the SPIR-V table
    VkPipeline pipeline;
    uint64_t dispatches;     // recorded so far (puna_vk_dispatches)
} pipeline_entry;

typedef struct {
    VkBuffer buffer[BINDINGS];
    VkDeviceSize offset[BINDINGS], range[BINDINGS];
    uint32_t count;
    VkDescriptorSet set;     // VK_NULL_HANDLE = empty slot
} descriptor_entry;

#define DECLARE(name) PFN_##name name;
struct puna_vk {
    PUNA_VK_DEVICE_FUNCS(DECLARE)
    PFN_vkGetMemoryHostPointerPropertiesEXT vkGetMemoryHostPointerPropertiesEXT;
    int index, tier, discrete, import_enabled;
    int fma_mode;            // enum puna_vk_fma, or -1 below the int8 tier
    puna_vk_device_info info;
    VkPhysicalDevice physical;
    VkPhysicalDeviceMemoryProperties memory_props;
    VkDevice device;
    VkQueue queue;
    VkCommandPool command_pool;
    VkCommandBuffer cmd, transfer_cmd;
    VkFence fence;
    VkDescriptorSetLayout set_layout;
    VkPipelineLayout pipeline_layout;
    VkDescriptorPool *pools;
    uint32_t pool_count, pool_used;          // sets handed out from pools[pool_count - 1]
    descriptor_entry *descriptors;
    uint32_t descriptor_capacity, descriptor_count;
    pipeline_entry pipelines[64];
    uint32_t pipeline_count;
    arena *arenas;
    uint32_t arena_count, arena_capacity;
    puna_vk_buffer staging;
    uint64_t min_offset_alignment, min_import_alignment;
    uint64_t timeout_ns;
    int hung;                // a submission outlived the timeout: the device may still be using memory
    int recording;
    // int8 tier: quantized activations of the matmul being recorded, and scratch buffers outgrown
    // while recording (the commands may still name them), freed at the next begin.
    puna_vk_buffer act;
    int act_live;
    puna_vk_buffer retired[8];
    uint32_t retired_count;
    char error[512];
};
#undef DECLARE

static void set_error(puna_vk *vk, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(puna_vk *vk, const char *fmt, ...) {
    if (vk->error[0]) return;   // keep the first cause
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(vk->error, sizeof vk->error, fmt, ap);
    va_end(ap);
}
#define CHECK(vk, call, what) do { VkResult r_ = (call); if (r_ != VK_SUCCESS) { set_error(vk, "%s failed (VkResult %d)", what, (int)r_); return -1; } } while (0)

// After a timeout the driver may still be running the work on its own threads (lavapipe) when the
// process exits; the libraries' destructors would then pull code and memory from under it. The
// first hang therefore registers an exit handler (registered last, so it runs first) that ends the
// process at once with status 1 (an error was reported), output flushed.
static void exit_before_destructors(void) {
    fflush(NULL);
    _exit(1);
}

static void mark_hung(puna_vk *vk) {
    static int registered;
    vk->hung = 1;
    if (!registered) {
        registered = 1;
        atexit(exit_before_destructors);
    }
}

int puna_vk_device_index(const puna_vk *vk) { return vk->index; }
const puna_vk_device_info *puna_vk_info(const puna_vk *vk) { return &vk->info; }
int puna_vk_tier(const puna_vk *vk) { return vk->tier; }
int puna_vk_int8_fma(const puna_vk *vk) { return vk->fma_mode; }
const char *puna_vk_error(const puna_vk *vk) { return vk->error; }
int puna_vk_hung(const puna_vk *vk) { return vk->hung; }
uint64_t puna_vk_max_binding_bytes(const puna_vk *vk) { return vk->info.max_storage_buffer_range; }

static int env_flag(const char *name) {
    const char *v = getenv(name);
    return v && v[0] && strcmp(v, "0") != 0;
}

static int device_rank(int type) {
    switch (type) {
    case PUNA_VK_DEVICE_DISCRETE: return 4;
    case PUNA_VK_DEVICE_INTEGRATED: return 3;
    case PUNA_VK_DEVICE_VIRTUAL: return 2;
    case PUNA_VK_DEVICE_CPU: return 1;
    default: return 0;
    }
}

static int setup(puna_vk *vk);
static int probe_fma(puna_vk *vk);
static int dispatch(puna_vk *vk, const char *name, const puna_vk_buffer *b, uint32_t n, const void *push,
                    uint32_t push_bytes, uint32_t gx, uint32_t gy, uint32_t gz);

static const char *const tier_names[PUNA_VK_TIER_COUNT] = {"baseline", "subgroup", "fp16", "int8"};

const char *puna_vk_tier_name(int tier) { return tier >= 0 && tier < PUNA_VK_TIER_COUNT ? tier_names[tier] : NULL; }

int puna_vk_tier_from_name(const char *name) {
    for (int t = 0; name && t < PUNA_VK_TIER_COUNT; t++) if (strcmp(name, tier_names[t]) == 0) return t;
    return -1;
}

int puna_vk_tier_supported(const puna_vk_device_info *info, int tier, char *missing, size_t missing_len) {
    char list[256] = "";
    size_t used = 0;
#define NEED(cond, what) if (tier >= t_ && !(cond)) used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", used ? ", " : "", what); \
    if (used >= sizeof list) used = sizeof list - 1;
    int t_ = PUNA_VK_TIER_BASELINE;
    NEED(info->usable, "Vulkan 1.1 compute")
    t_ = PUNA_VK_TIER_SUBGROUP;
    NEED(info->subgroup_arithmetic, "subgroup arithmetic in compute shaders")
    t_ = PUNA_VK_TIER_FP16;
    NEED(info->storage_buffer_16bit, "storageBuffer16BitAccess")
    t_ = PUNA_VK_TIER_INT8;
    NEED(info->integer_dot_product, "VK_KHR_shader_integer_dot_product")
#undef NEED
    if (tier < 0 || tier >= PUNA_VK_TIER_COUNT) snprintf(list, sizeof list, "a tier numbered %d", tier);
    if (missing && missing_len) snprintf(missing, missing_len, "%s", list);
    return list[0] == 0;
}

int puna_vk_best_tier(const puna_vk_device_info *info) {
    int best = PUNA_VK_TIER_BASELINE;
    for (int t = 1; t < PUNA_VK_TIER_COUNT; t++) {
        // An emulated dot product (lavapipe's) makes the int8 tier slower than the float shaders;
        // it stays available when forced.
        if (t == PUNA_VK_TIER_INT8 && !info->integer_dot_product_accelerated) continue;
        if (puna_vk_tier_supported(info, t, NULL, 0)) best = t;
    }
    return best;
}

// The tier a context gets: forced (argument, then PUNA_VK_TIER, then PUNA_VK_BASELINE=1) or the
// best the device has. -1 with the reason in err.
static int choose_tier(const puna_vk_device_info *info, int requested, char *err, size_t err_len) {
    const char *source = "the requested tier";
    if (requested < 0) {
        const char *env = getenv("PUNA_VK_TIER");
        if (env && env[0]) {
            requested = puna_vk_tier_from_name(env);
            if (requested < 0) {
                if (err && err_len) snprintf(err, err_len, "PUNA_VK_TIER=%s is not a tier (baseline, subgroup, fp16, int8)", env);
                return -1;
            }
            source = "PUNA_VK_TIER";
        } else if (env_flag("PUNA_VK_BASELINE")) {
            return PUNA_VK_TIER_BASELINE;
        } else {
            return puna_vk_best_tier(info);
        }
    }
    char missing[256];
    if (!puna_vk_tier_supported(info, requested, missing, sizeof missing)) {
        if (err && err_len)
            snprintf(err, err_len, "%s %s needs %s, which %s lacks", source,
                     puna_vk_tier_name(requested) ? puna_vk_tier_name(requested) : "?", missing, info->name);
        return -1;
    }
    return requested;
}

puna_vk *puna_vk_create(int device_index, int requested_tier, char *err, size_t err_len) {
    if (!puna_vk_load()) {
        if (err && err_len) snprintf(err, err_len, "Vulkan is not available: %s", g_load_error);
        return NULL;
    }
    if (g_physical_count == 0) {
        if (err && err_len) snprintf(err, err_len, "Vulkan found no device");
        return NULL;
    }
    if (device_index >= (int)g_physical_count) {
        if (err && err_len) snprintf(err, err_len, "no Vulkan device %d (there are %u; see 'puna devices')", device_index, g_physical_count);
        return NULL;
    }
    if (device_index < 0) {
        int best = -1;
        for (uint32_t i = 0; i < g_physical_count; i++)
            if (g_info[i].usable && (best < 0 || device_rank(g_info[i].type) > device_rank(g_info[best].type))) best = (int)i;
        if (best < 0) {
            if (err && err_len) snprintf(err, err_len, "no Vulkan device supports Vulkan 1.1 compute");
            return NULL;
        }
        device_index = best;
    } else if (!g_info[device_index].usable) {
        if (err && err_len) snprintf(err, err_len, "Vulkan device %d (%s) lacks Vulkan 1.1 compute", device_index, g_info[device_index].name);
        return NULL;
    }
    int tier = choose_tier(&g_info[device_index], requested_tier, err, err_len);
    if (tier < 0) return NULL;
    puna_vk *vk = calloc(1, sizeof *vk);
    if (!vk) {
        if (err && err_len) snprintf(err, err_len, "out of memory");
        return NULL;
    }
    vk->index = device_index;
    vk->physical = g_physical[device_index];
    vk->info = g_info[device_index];
    // PUNA_VK_STAGING=1 takes the discrete-GPU memory path anywhere (device memory never mapped,
    // uploads through the staging buffer, no import), so CI exercises it on lavapipe.
    vk->discrete = vk->info.type == PUNA_VK_DEVICE_DISCRETE || env_flag("PUNA_VK_STAGING");
    vk->tier = tier;
    const char *timeout = getenv("PUNA_VK_TIMEOUT_S");
    double seconds = timeout ? atof(timeout) : 0;
    vk->timeout_ns = (uint64_t)((seconds > 0 ? seconds : 600.0) * 1e9);
    vk->fma_mode = -1;
    if (setup(vk) != 0 || (vk->tier >= PUNA_VK_TIER_INT8 && probe_fma(vk) != 0)) {
        if (err && err_len) snprintf(err, err_len, "Vulkan device %d (%s): %s", device_index, vk->info.name, vk->error);
        puna_vk_destroy(vk);
        return NULL;
    }
    return vk;
}

static int setup(puna_vk *vk) {
    p_vkGetPhysicalDeviceMemoryProperties(vk->physical, &vk->memory_props);
    VkPhysicalDeviceProperties props;
    p_vkGetPhysicalDeviceProperties(vk->physical, &props);
    vk->min_offset_alignment = props.limits.minStorageBufferOffsetAlignment;
    if (vk->min_offset_alignment < 4) vk->min_offset_alignment = 4;

    uint32_t nq = 0;
    p_vkGetPhysicalDeviceQueueFamilyProperties(vk->physical, &nq, NULL);
    VkQueueFamilyProperties q[32];
    if (nq > 32) nq = 32;
    p_vkGetPhysicalDeviceQueueFamilyProperties(vk->physical, &nq, q);
    uint32_t family = UINT32_MAX;
    // A compute queue without graphics when there is one (it is free of display work), else any.
    for (uint32_t i = 0; i < nq; i++)
        if ((q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) && !(q[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) { family = i; break; }
    for (uint32_t i = 0; family == UINT32_MAX && i < nq; i++)
        if (q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) family = i;

    // Zero-copy import only where the GPU reads system memory at full speed (not over PCIe).
    const char *extensions[2];
    uint32_t n_extensions = 0;
    const void *features = NULL;
    // Each tier's features, chained onto features2 (tiers include the ones below).
    VkPhysicalDeviceShaderIntegerDotProductFeatures dot = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES, .shaderIntegerDotProduct = VK_TRUE};
    VkPhysicalDevice16BitStorageFeatures storage16 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES, .storageBuffer16BitAccess = VK_TRUE};
    VkPhysicalDeviceFeatures2 features2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &storage16};
    if (vk->tier >= PUNA_VK_TIER_FP16) features = &features2;   // 16-bit storage is Vulkan 1.1 core
    if (vk->tier >= PUNA_VK_TIER_INT8) {
        extensions[n_extensions++] = VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME;
        storage16.pNext = &dot;
        features2.features.shaderFloat64 = vk->info.shader_float64 ? VK_TRUE : 0;   // the FMA_F64 variants
    }
    if (vk->info.external_memory_host && !vk->discrete && !env_flag("PUNA_VK_NO_IMPORT")) {
        extensions[n_extensions++] = VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME;
        vk->import_enabled = 1;
        VkPhysicalDeviceExternalMemoryHostPropertiesEXT host = {
            .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_MEMORY_HOST_PROPERTIES_EXT};
        VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &host};
        p_vkGetPhysicalDeviceProperties2(vk->physical, &p2);
        vk->min_import_alignment = host.minImportedHostPointerAlignment ? host.minImportedHostPointerAlignment : 4096;
    }
    float priority = 1.0f;
    VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, .queueFamilyIndex = family,
                                   .queueCount = 1, .pQueuePriorities = &priority};
    VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .pNext = features, .queueCreateInfoCount = 1,
                              .pQueueCreateInfos = &qci, .enabledExtensionCount = n_extensions,
                              .ppEnabledExtensionNames = extensions};
    CHECK(vk, p_vkCreateDevice(vk->physical, &dci, NULL, &vk->device), "vkCreateDevice");
#define LOAD_DEVICE(name) vk->name = (PFN_##name)p_vkGetDeviceProcAddr(vk->device, #name); \
    if (!vk->name) { set_error(vk, "device lacks %s", #name); return -1; }
    PUNA_VK_DEVICE_FUNCS(LOAD_DEVICE)
#undef LOAD_DEVICE
    if (vk->import_enabled) {
        vk->vkGetMemoryHostPointerPropertiesEXT = (PFN_vkGetMemoryHostPointerPropertiesEXT)
            p_vkGetDeviceProcAddr(vk->device, "vkGetMemoryHostPointerPropertiesEXT");
        if (!vk->vkGetMemoryHostPointerPropertiesEXT) vk->import_enabled = 0;
    }
    vk->vkGetDeviceQueue(vk->device, family, 0, &vk->queue);

    VkCommandPoolCreateInfo pci = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                   .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, .queueFamilyIndex = family};
    CHECK(vk, vk->vkCreateCommandPool(vk->device, &pci, NULL, &vk->command_pool), "vkCreateCommandPool");
    VkCommandBuffer cmds[2];
    VkCommandBufferAllocateInfo cai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, .commandPool = vk->command_pool,
                                       .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY, .commandBufferCount = 2};
    CHECK(vk, vk->vkAllocateCommandBuffers(vk->device, &cai, cmds), "vkAllocateCommandBuffers");
    vk->cmd = cmds[0];
    vk->transfer_cmd = cmds[1];
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    CHECK(vk, vk->vkCreateFence(vk->device, &fci, NULL, &vk->fence), "vkCreateFence");

    VkDescriptorSetLayoutBinding bindings[BINDINGS];
    for (uint32_t i = 0; i < BINDINGS; i++)
        bindings[i] = (VkDescriptorSetLayoutBinding){.binding = i, .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                                     .descriptorCount = 1, .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
    VkDescriptorSetLayoutCreateInfo lci = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                                           .bindingCount = BINDINGS, .pBindings = bindings};
    CHECK(vk, vk->vkCreateDescriptorSetLayout(vk->device, &lci, NULL, &vk->set_layout), "vkCreateDescriptorSetLayout");
    VkPushConstantRange push = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .offset = 0, .size = PUSH_BYTES};
    VkPipelineLayoutCreateInfo plci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, .setLayoutCount = 1,
                                       .pSetLayouts = &vk->set_layout, .pushConstantRangeCount = 1,
                                       .pPushConstantRanges = &push};
    CHECK(vk, vk->vkCreatePipelineLayout(vk->device, &plci, NULL, &vk->pipeline_layout), "vkCreatePipelineLayout");
    if (puna_vk_alloc(vk, STAGING_BYTES, PUNA_VK_MEMORY_HOST, 1, &vk->staging) != 0) return -1;
    return 0;
}

// Whether fma() is fused on this driver: 1 + 2^-12 squared is 1 + 2^-11 + 2^-24, whose last term
// a separately rounded product drops (a tie, to even), so fma(a, a, -1) is 2^-11 + 2^-24 only when
// fused. The inputs come from a buffer so no compiler folds them.
static int probe_fma(puna_vk *vk) {
    puna_vk_buffer b;
    if (puna_vk_alloc(vk, 16, PUNA_VK_MEMORY_HOST, 0, &b) != 0) return -1;
    float *v = puna_vk_host_pointer(vk, b);
    if (!v) { set_error(vk, "fma probe: host buffer not mapped"); return -1; }
    const float a = 1.0f + 0x1p-12f;
    v[0] = a; v[1] = a; v[2] = -1.0f; v[3] = 0.0f;
    uint32_t unused = 0;
    if (puna_vk_begin(vk) != 0 || dispatch(vk, "fma_probe", &b, 1, &unused, sizeof unused, 1, 1, 1) != 0 || puna_vk_submit(vk) != 0)
        return -1;
    if (v[3] == 0x1p-11f + 0x1p-24f) vk->fma_mode = PUNA_VK_FMA_FUSED;
    else vk->fma_mode = vk->info.shader_float64 ? PUNA_VK_FMA_F64 : PUNA_VK_FMA_UNFUSED;
    return 0;
}

void puna_vk_destroy(puna_vk *vk) {
    if (!vk) return;
    // After a timeout the device may still run (or be stuck in) that work: waiting could hang for
    // good and destroying would pull memory from under it, so the Vulkan objects are left alone.
    if (vk->device && !vk->hung) {
        vk->vkDeviceWaitIdle(vk->device);
        for (uint32_t i = 0; i < vk->pipeline_count; i++) vk->vkDestroyPipeline(vk->device, vk->pipelines[i].pipeline, NULL);
        for (uint32_t i = 0; i < vk->pool_count; i++) vk->vkDestroyDescriptorPool(vk->device, vk->pools[i], NULL);
        for (uint32_t i = 0; i < vk->arena_count; i++) {
            if (!vk->arenas[i].live) continue;
            vk->vkDestroyBuffer(vk->device, vk->arenas[i].buffer, NULL);
            vk->vkFreeMemory(vk->device, vk->arenas[i].memory, NULL);
        }
        if (vk->pipeline_layout) vk->vkDestroyPipelineLayout(vk->device, vk->pipeline_layout, NULL);
        if (vk->set_layout) vk->vkDestroyDescriptorSetLayout(vk->device, vk->set_layout, NULL);
        if (vk->fence) vk->vkDestroyFence(vk->device, vk->fence, NULL);
        if (vk->command_pool) vk->vkDestroyCommandPool(vk->device, vk->command_pool, NULL);
        vk->vkDestroyDevice(vk->device, NULL);
    }
    free(vk->pools);
    free(vk->descriptors);
    free(vk->arenas);
    free(vk);
}

// ---- memory --------------------------------------------------------------------------------------
static int find_memory_type(puna_vk *vk, uint32_t allowed, VkMemoryPropertyFlags required, VkMemoryPropertyFlags preferred) {
    int fallback = -1;
    for (uint32_t i = 0; i < vk->memory_props.memoryTypeCount; i++) {
        if (!(allowed & (1u << i))) continue;
        VkMemoryPropertyFlags f = vk->memory_props.memoryTypes[i].propertyFlags;
        if ((f & required) != required) continue;
        if ((f & preferred) == preferred) return (int)i;
        if (fallback < 0) fallback = (int)i;
    }
    return fallback;
}

static int new_arena(puna_vk *vk, uint64_t size, int memory_kind, int dedicated, uint32_t *index_out) {
    if (vk->arena_count == vk->arena_capacity) {
        uint32_t cap = vk->arena_capacity ? 2 * vk->arena_capacity : 32;
        arena *a = realloc(vk->arenas, cap * sizeof *a);
        if (!a) { set_error(vk, "out of host memory"); return -1; }
        vk->arenas = a;
        vk->arena_capacity = cap;
    }
    if (size > vk->info.max_allocation_size) {
        set_error(vk, "an allocation of %llu MiB exceeds the device's limit of %llu MiB", (unsigned long long)(size >> 20), (unsigned long long)(vk->info.max_allocation_size >> 20));
        return -1;
    }
    arena *a = &vk->arenas[vk->arena_count];
    memset(a, 0, sizeof *a);
    VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = size,
                              .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                       VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                              .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    CHECK(vk, vk->vkCreateBuffer(vk->device, &bci, NULL, &a->buffer), "vkCreateBuffer");
    VkMemoryRequirements req;
    vk->vkGetBufferMemoryRequirements(vk->device, a->buffer, &req);
    int type;
    if (memory_kind == PUNA_VK_MEMORY_HOST) {
        type = find_memory_type(vk, req.memoryTypeBits, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                                VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
    } else if (vk->discrete) {
        type = find_memory_type(vk, req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
    } else {
        // UMA: the same RAM either way; host-visible lets weights be written without staging.
        type = find_memory_type(vk, req.memoryTypeBits, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                                VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
        if (type < 0) type = find_memory_type(vk, req.memoryTypeBits, 0, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
    }
    if (type < 0) {
        vk->vkDestroyBuffer(vk->device, a->buffer, NULL);
        set_error(vk, "no suitable memory type for a buffer");
        return -1;
    }
    VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .allocationSize = req.size,
                                .memoryTypeIndex = (uint32_t)type};
    VkResult r = vk->vkAllocateMemory(vk->device, &mai, NULL, &a->memory);
    if (r != VK_SUCCESS) {
        vk->vkDestroyBuffer(vk->device, a->buffer, NULL);
        set_error(vk, "%s failed (VkResult %d): out of GPU memory?", "vkAllocateMemory", (int)r);
        return -1;
    }
    CHECK(vk, vk->vkBindBufferMemory(vk->device, a->buffer, a->memory, 0), "vkBindBufferMemory");
    if ((vk->memory_props.memoryTypes[type].propertyFlags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT) &&
        (memory_kind == PUNA_VK_MEMORY_HOST || !vk->discrete))
        CHECK(vk, vk->vkMapMemory(vk->device, a->memory, 0, VK_WHOLE_SIZE, 0, &a->mapped), "vkMapMemory");
    a->size = size;
    a->memory_kind = memory_kind;
    a->dedicated = dedicated;
    a->live = 1;
    *index_out = vk->arena_count++;
    return 0;
}

int puna_vk_alloc(puna_vk *vk, uint64_t bytes, int memory, int dedicated, puna_vk_buffer *out) {
    uint64_t size = (bytes + SUBALLOC_ALIGN - 1) & ~(SUBALLOC_ALIGN - 1);
    if (size == 0) size = SUBALLOC_ALIGN;
    uint32_t index;
    if (dedicated || size > SHARED_ARENA_BYTES / 4) {
        if (new_arena(vk, size, memory, 1, &index) != 0) return -1;
        vk->arenas[index].used = size;
        *out = (puna_vk_buffer){.arena = index, .offset = 0, .size = bytes};
        return 0;
    }
    for (uint32_t i = 0; i < vk->arena_count; i++) {
        arena *a = &vk->arenas[i];
        if (a->live && !a->dedicated && !a->imported && a->memory_kind == memory && a->size - a->used >= size) {
            *out = (puna_vk_buffer){.arena = i, .offset = a->used, .size = bytes};
            a->used += size;
            return 0;
        }
    }
    if (new_arena(vk, SHARED_ARENA_BYTES, memory, 0, &index) != 0) return -1;
    vk->arenas[index].used = size;
    *out = (puna_vk_buffer){.arena = index, .offset = 0, .size = bytes};
    return 0;
}

static void forget_descriptors(puna_vk *vk) {
    // Sets may name the buffer being freed: drop them all (they are rebuilt on demand).
    for (uint32_t i = 0; i < vk->pool_count; i++) vk->vkDestroyDescriptorPool(vk->device, vk->pools[i], NULL);
    vk->pool_count = 0;
    vk->pool_used = 0;
    if (vk->descriptors) memset(vk->descriptors, 0, vk->descriptor_capacity * sizeof *vk->descriptors);
    vk->descriptor_count = 0;
}

void puna_vk_free(puna_vk *vk, puna_vk_buffer b) {
    if (!vk || b.arena >= vk->arena_count) return;
    arena *a = &vk->arenas[b.arena];
    if (!a->live || !a->dedicated || vk->hung) return;   // carved buffers live as long as the context
    vk->vkDeviceWaitIdle(vk->device);
    forget_descriptors(vk);
    vk->vkDestroyBuffer(vk->device, a->buffer, NULL);
    vk->vkFreeMemory(vk->device, a->memory, NULL);
    a->live = 0;
}

void *puna_vk_host_pointer(puna_vk *vk, puna_vk_buffer b) {
    if (b.arena >= vk->arena_count || !vk->arenas[b.arena].mapped) return NULL;
    return (char *)vk->arenas[b.arena].mapped + b.offset;
}

static int run_transfer(puna_vk *vk, VkBuffer src, uint64_t src_off, VkBuffer dst, uint64_t dst_off, uint64_t n) {
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                   .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    CHECK(vk, vk->vkResetCommandBuffer(vk->transfer_cmd, 0), "vkResetCommandBuffer");
    CHECK(vk, vk->vkBeginCommandBuffer(vk->transfer_cmd, &bi), "vkBeginCommandBuffer");
    VkBufferCopy region = {.srcOffset = src_off, .dstOffset = dst_off, .size = n};
    vk->vkCmdCopyBuffer(vk->transfer_cmd, src, dst, 1, &region);
    CHECK(vk, vk->vkEndCommandBuffer(vk->transfer_cmd), "vkEndCommandBuffer");
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &vk->transfer_cmd};
    CHECK(vk, vk->vkResetFences(vk->device, 1, &vk->fence), "vkResetFences");
    CHECK(vk, vk->vkQueueSubmit(vk->queue, 1, &si, vk->fence), "vkQueueSubmit");
    VkResult r = vk->vkWaitForFences(vk->device, 1, &vk->fence, VK_TRUE, vk->timeout_ns);
    if (r == VK_TIMEOUT) mark_hung(vk);
    CHECK(vk, r, "vkWaitForFences (upload)");
    return 0;
}

int puna_vk_write(puna_vk *vk, puna_vk_buffer dst, uint64_t offset, const void *src, uint64_t bytes) {
    if (dst.arena >= vk->arena_count || offset + bytes > dst.size) {
        set_error(vk, "puna_vk_write: range outside the buffer");
        return -1;
    }
    arena *a = &vk->arenas[dst.arena];
    if (a->imported) { set_error(vk, "puna_vk_write: imported memory is read-only"); return -1; }
    if (a->mapped) {
        memcpy((char *)a->mapped + dst.offset + offset, src, bytes);
        return 0;
    }
    arena *s = &vk->arenas[vk->staging.arena];
    for (uint64_t done = 0; done < bytes;) {
        uint64_t n = bytes - done < STAGING_BYTES ? bytes - done : STAGING_BYTES;
        memcpy(s->mapped, (const char *)src + done, n);
        if (run_transfer(vk, s->buffer, 0, a->buffer, dst.offset + offset + done, n) != 0) return -1;
        done += n;
    }
    return 0;
}

static int import_range(puna_vk *vk, uintptr_t start, uint64_t size);

int puna_vk_import_host(puna_vk *vk, const void *ptr, uint64_t bytes) {
    if (!vk->import_enabled || !ptr) return 0;
    uint64_t align = vk->min_import_alignment;
    uintptr_t start = ((uintptr_t)ptr + align - 1) & ~(uintptr_t)(align - 1);
    uintptr_t end = ((uintptr_t)ptr + bytes) & ~(uintptr_t)(align - 1);   // stay inside the caller's range
    if (end <= start) return 0;
    // One allocation may not exceed maxMemoryAllocationSize (2 GiB on lavapipe): import in chunks
    // of at most 1 GiB; the few tensors that straddle a boundary are copied instead.
    uint64_t chunk = vk->info.max_allocation_size < (1ull << 30) ? vk->info.max_allocation_size : (1ull << 30);
    chunk &= ~(align - 1);
    if (chunk == 0) return 0;
    int imported = 0;
    for (uintptr_t at = start; at < end; at += chunk) {
        uint64_t size = end - at < chunk ? end - at : chunk;
        if (import_range(vk, at, size)) imported = 1;
        else break;   // the driver refuses this memory: no use trying the rest
    }
    return imported;
}

// Imports [start, start + size) as one allocation with one buffer over it. 1 on success.
static int import_range(puna_vk *vk, uintptr_t start, uint64_t size) {
    VkMemoryHostPointerPropertiesEXT hp = {.sType = VK_STRUCTURE_TYPE_MEMORY_HOST_POINTER_PROPERTIES_EXT};
    if (vk->vkGetMemoryHostPointerPropertiesEXT(vk->device, VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT,
                                                (void *)start, &hp) != VK_SUCCESS || hp.memoryTypeBits == 0)
        return 0;
    if (vk->arena_count == vk->arena_capacity) {
        uint32_t cap = vk->arena_capacity ? 2 * vk->arena_capacity : 32;
        arena *a = realloc(vk->arenas, cap * sizeof *a);
        if (!a) return 0;
        vk->arenas = a;
        vk->arena_capacity = cap;
    }
    arena a = {0};
    VkExternalMemoryBufferCreateInfo ext = {.sType = VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO,
                                            .handleTypes = VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT};
    VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .pNext = &ext, .size = size,
                              .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT,
                              .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    if (vk->vkCreateBuffer(vk->device, &bci, NULL, &a.buffer) != VK_SUCCESS) return 0;
    VkMemoryRequirements req;
    vk->vkGetBufferMemoryRequirements(vk->device, a.buffer, &req);
    int type = find_memory_type(vk, req.memoryTypeBits & hp.memoryTypeBits, 0, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
    VkImportMemoryHostPointerInfoEXT import = {.sType = VK_STRUCTURE_TYPE_IMPORT_MEMORY_HOST_POINTER_INFO_EXT,
                                               .handleType = VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT,
                                               .pHostPointer = (void *)start};
    VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .pNext = &import, .allocationSize = size,
                                .memoryTypeIndex = (uint32_t)type};
    if (type < 0 || vk->vkAllocateMemory(vk->device, &mai, NULL, &a.memory) != VK_SUCCESS) {
        vk->vkDestroyBuffer(vk->device, a.buffer, NULL);
        return 0;
    }
    if (vk->vkBindBufferMemory(vk->device, a.buffer, a.memory, 0) != VK_SUCCESS) {
        vk->vkDestroyBuffer(vk->device, a.buffer, NULL);
        vk->vkFreeMemory(vk->device, a.memory, NULL);
        return 0;
    }
    a.mapped = (void *)start;
    a.size = a.used = size;
    a.memory_kind = PUNA_VK_MEMORY_DEVICE;
    a.dedicated = 1;
    a.imported = 1;
    a.live = 1;
    vk->arenas[vk->arena_count++] = a;
    return 1;
}

int puna_vk_native_type(int type) {
    switch (type) {
    case PUNA_TYPE_F32: case PUNA_TYPE_F16: case PUNA_TYPE_Q4_0: case PUNA_TYPE_Q4_1: case PUNA_TYPE_Q5_0:
    case PUNA_TYPE_Q5_1: case PUNA_TYPE_Q8_0: case PUNA_TYPE_Q4_K: case PUNA_TYPE_Q5_K: case PUNA_TYPE_Q6_K: return 1;
    default: return 0;
    }
}

static int is_bnb(int type) { return type == PUNA_TYPE_BNB4 || type == PUNA_TYPE_BNB_INT8; }

// Shaders read weights in chunks of 8 inside one block: F32/F16 rows need a multiple of 8
// columns (LoRA ranks), block types whole 32-weight blocks, bitsandbytes 4-bit its blocks of 64.
static int column_multiple(int type) {
    return type == PUNA_TYPE_F32 || type == PUNA_TYPE_F16 ? 8 : type == PUNA_TYPE_BNB4 ? (int)PUNA_VK_BNB4_BLOCK : 32;
}

uint64_t puna_vk_matrix_bytes(int type, int64_t rows, int64_t cols) {
    if (rows < 0 || cols < 0) return 0;
    // bitsandbytes: the GPU layout of bnb_layout.h, not the file's tensors.
    if (type == PUNA_TYPE_BNB4)
        return cols % PUNA_VK_BNB4_BLOCK ? 0 : (uint64_t)rows * (uint64_t)(cols / PUNA_VK_BNB4_BLOCK) * PUNA_VK_BNB4_BLOCK_BYTES;
    if (type == PUNA_TYPE_BNB_INT8) return cols % 4 ? 0 : (uint64_t)rows * ((uint64_t)cols + PUNA_VK_BNB_INT8_VALUES);
    if (type < 0 || type >= PUNA_TYPE_COUNT || !puna_type_table[type].name) return 0;
    const puna_type_info *t = &puna_type_table[type];
    if (t->block_size == 0 || cols % t->block_size) return 0;
    return (uint64_t)rows * (uint64_t)(cols / t->block_size) * t->type_size;
}

// bitsandbytes descriptor -> rows in the layout of bnb_layout.h, a few MiB of rows at a time.
static int upload_bnb(puna_vk *vk, int type, const void *desc, int64_t rows, int64_t cols, puna_vk_buffer *out) {
    const puna_bnb4_weight *w4 = type == PUNA_TYPE_BNB4 ? desc : NULL;
    const puna_bnb_int8_weight *w8 = type == PUNA_TYPE_BNB_INT8 ? desc : NULL;
    if (w4 ? puna_bnb4_validate(w4, cols) != 0 || w4->blocksize != PUNA_VK_BNB4_BLOCK : puna_bnb_int8_validate(w8, cols) != 0) {
        set_error(vk, "weights: a bitsandbytes descriptor the shaders cannot take (4-bit needs blocks of %u)", PUNA_VK_BNB4_BLOCK);
        return -1;
    }
    const uint64_t row_bytes = puna_vk_matrix_bytes(type, 1, cols);
    const int64_t row_blocks = cols / PUNA_VK_BNB4_BLOCK;   // 4-bit blocks per row
    if (puna_vk_alloc(vk, (uint64_t)rows * row_bytes, PUNA_VK_MEMORY_DEVICE, 1, out) != 0) return -1;
    uint64_t chunk_rows = (4u << 20) / row_bytes;
    if (chunk_rows == 0) chunk_rows = 1;
    if (chunk_rows > (uint64_t)rows) chunk_rows = (uint64_t)rows;
    uint8_t *chunk = malloc((size_t)(chunk_rows * row_bytes));
    float *absmax = w4 ? malloc((size_t)(chunk_rows * (uint64_t)row_blocks) * sizeof(float)) : NULL;
    if (!chunk || (w4 && !absmax)) { free(chunk); free(absmax); set_error(vk, "weights: out of host memory"); return -1; }
    int rc = 0;
    for (int64_t r0 = 0; r0 < rows && rc == 0; r0 += (int64_t)chunk_rows) {
        int64_t n = rows - r0 < (int64_t)chunk_rows ? rows - r0 : (int64_t)chunk_rows;
        if (w4 && puna_bnb4_block_absmax(w4, r0 * row_blocks, n * row_blocks, absmax) != 0) {
            set_error(vk, "weights: bitsandbytes absmax could not be decoded");
            rc = -1;
            break;
        }
        for (int64_t r = 0; r < n; r++) {
            uint8_t *dst = chunk + (uint64_t)r * row_bytes;
            if (w4) {
                for (int64_t b = 0; b < row_blocks; b++) {
                    uint8_t *block = dst + (uint64_t)b * PUNA_VK_BNB4_BLOCK_BYTES;
                    memcpy(block + PUNA_VK_BNB4_ABSMAX, &absmax[r * row_blocks + b], sizeof(float));
                    memcpy(block + PUNA_VK_BNB4_CODES, w4->packed + ((r0 + r) * cols + b * PUNA_VK_BNB4_BLOCK) / 2, PUNA_VK_BNB4_BLOCK / 2);
                }
            } else {
                memcpy(dst + PUNA_VK_BNB_INT8_SCALE, &w8->row_scale[r0 + r], sizeof(float));
                memcpy(dst + PUNA_VK_BNB_INT8_VALUES, w8->weight + (r0 + r) * cols, (size_t)cols);
            }
        }
        rc = puna_vk_write(vk, *out, (uint64_t)r0 * row_bytes, chunk, (uint64_t)n * row_bytes);
    }
    free(chunk);
    free(absmax);
    return rc;
}

int puna_vk_upload_matrix(puna_vk *vk, int type, const void *data, int64_t rows, int64_t cols,
                          puna_vk_buffer *out, int *gpu_type, int *zero_copy) {
    *zero_copy = 0;
    if (cols % column_multiple(type) != 0 || rows <= 0) {
        set_error(vk, "weights: columns must be a multiple of %d (got %lld)", column_multiple(type), (long long)cols);
        return -1;
    }
    uint64_t bytes = puna_vk_matrix_bytes(type, rows, cols);
    if (bytes == 0) { set_error(vk, "weights: unsupported type %d", type); return -1; }
    if (is_bnb(type)) {   // always repacked (bnb_layout.h): the file keeps codes and scales apart
        *gpu_type = type;
        return upload_bnb(vk, type, data, rows, cols, out);
    }
    if (puna_vk_native_type(type)) {
        *gpu_type = type;
        // Inside an imported range? Then the shaders read the file mapping itself.
        for (uint32_t i = 0; i < vk->arena_count; i++) {
            arena *a = &vk->arenas[i];
            if (!a->live || !a->imported) continue;
            const char *base = a->mapped;
            if ((const char *)data >= base && (const char *)data + bytes <= base + a->size &&
                ((const char *)data - base) % 2 == 0) {
                *out = (puna_vk_buffer){.arena = i, .offset = (uint64_t)((const char *)data - base), .size = bytes};
                *zero_copy = 1;
                return 0;
            }
        }
        if (puna_vk_alloc(vk, bytes, PUNA_VK_MEMORY_DEVICE, 1, out) != 0) return -1;
        return puna_vk_write(vk, *out, 0, data, bytes);
    }
    // Decode row by row and re-encode as F16 (BF16 and wider keep their range as F32).
    const puna_type_info *t = &puna_type_table[type];
    if (!t->decode) { set_error(vk, "weights: type %d cannot be decoded", type); return -1; }
    int target = (type == PUNA_TYPE_BF16 || type == PUNA_TYPE_F64) ? PUNA_TYPE_F32 : PUNA_TYPE_F16;
    uint64_t element = target == PUNA_TYPE_F32 ? 4 : 2;
    uint64_t out_bytes = (uint64_t)rows * (uint64_t)cols * element;
    if (puna_vk_alloc(vk, out_bytes, PUNA_VK_MEMORY_DEVICE, 1, out) != 0) return -1;
    *gpu_type = target;
    float *row = malloc((size_t)cols * sizeof(float));
    uint64_t chunk_rows = (4u << 20) / ((uint64_t)cols * element);
    if (chunk_rows == 0) chunk_rows = 1;
    void *chunk = malloc((size_t)(chunk_rows * (uint64_t)cols * element));
    if (!row || !chunk) { free(row); free(chunk); set_error(vk, "weights: out of host memory"); return -1; }
    uint64_t in_row = bytes / (uint64_t)rows;
    int rc = 0;
    for (int64_t r0 = 0; r0 < rows && rc == 0; r0 += (int64_t)chunk_rows) {
        int64_t n = rows - r0 < (int64_t)chunk_rows ? rows - r0 : (int64_t)chunk_rows;
        for (int64_t r = 0; r < n; r++) {
            t->decode((const char *)data + (uint64_t)(r0 + r) * in_row, row, cols);
            if (target == PUNA_TYPE_F32) memcpy((float *)chunk + r * cols, row, (size_t)cols * sizeof(float));
            else for (int64_t c = 0; c < cols; c++) ((puna_f16 *)chunk)[r * cols + c] = puna_f32_to_f16(row[c]);
        }
        rc = puna_vk_write(vk, *out, (uint64_t)r0 * (uint64_t)cols * element, chunk, (uint64_t)n * (uint64_t)cols * element);
    }
    free(row);
    free(chunk);
    return rc;
}

// ---- pipelines and descriptor sets ---------------------------------------------------------------
// The pipeline entry for a shader name (made on first use): the subgroup variant on that tier when
// one exists, else the baseline. Specialization: constant 0 = workgroup size, 1 = rows per workgroup (matvec).
static pipeline_entry *get_pipeline(puna_vk *vk, const char *name) {
    for (uint32_t i = 0; i < vk->pipeline_count; i++)
        if (strcmp(vk->pipelines[i].name, name) == 0) return &vk->pipelines[i];
    const puna_vk_spirv *chosen = NULL;
    for (size_t i = 0; i < PUNA_VK_SPIRV_COUNT; i++) {
        const puna_vk_spirv *s = &puna_vk_spirv_table[i];
        if (strcmp(s->name, name) != 0 || s->tier > vk->tier) continue;
        if (!chosen || s->tier > chosen->tier) chosen = s;
    }
    if (!chosen) { set_error(vk, "no shader named %s", name); return NULL; }
    if (vk->pipeline_count == sizeof vk->pipelines / sizeof vk->pipelines[0]) {
        set_error(vk, "%s: too many pipelines", name);
        return NULL;
    }
    VkShaderModuleCreateInfo smci = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                                     .codeSize = chosen->words * 4u, .pCode = chosen->code};
    VkShaderModule module;
    VkResult r = vk->vkCreateShaderModule(vk->device, &smci, NULL, &module);
    if (r != VK_SUCCESS) { set_error(vk, "vkCreateShaderModule(%s) failed (VkResult %d)", name, (int)r); return NULL; }
    uint32_t spec[2] = {64, 2};
    VkSpecializationMapEntry entries[2] = {{.constantID = 0, .offset = 0, .size = 4}, {.constantID = 1, .offset = 4, .size = 4}};
    VkSpecializationInfo si = {.mapEntryCount = 2, .pMapEntries = entries, .dataSize = sizeof spec, .pData = spec};
    VkComputePipelineCreateInfo cpci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                  .module = module, .pName = "main", .pSpecializationInfo = &si},
        .layout = vk->pipeline_layout};
    VkPipeline pipeline = VK_NULL_HANDLE;
    r = vk->vkCreateComputePipelines(vk->device, VK_NULL_HANDLE, 1, &cpci, NULL, &pipeline);
    vk->vkDestroyShaderModule(vk->device, module, NULL);
    if (r != VK_SUCCESS) { set_error(vk, "vkCreateComputePipelines(%s) failed (VkResult %d)", name, (int)r); return NULL; }
    vk->pipelines[vk->pipeline_count] = (pipeline_entry){.name = chosen->name, .pipeline = pipeline};
    return &vk->pipelines[vk->pipeline_count++];
}

uint64_t puna_vk_dispatches(const puna_vk *vk, const char *prefix) {
    uint64_t n = 0;
    size_t len = strlen(prefix);
    for (uint32_t i = 0; i < vk->pipeline_count; i++)
        if (strncmp(vk->pipelines[i].name, prefix, len) == 0) n += vk->pipelines[i].dispatches;
    return n;
}

typedef struct {
    VkBuffer buffer;
    VkDeviceSize offset, range;
    uint32_t residual;       // bytes between the bound offset (aligned down) and the data
} binding;

static int bind_buffer(puna_vk *vk, puna_vk_buffer b, binding *out) {
    if (b.arena >= vk->arena_count || !vk->arenas[b.arena].live) { set_error(vk, "binding a freed buffer"); return -1; }
    arena *a = &vk->arenas[b.arena];
    uint64_t aligned = b.offset & ~(vk->min_offset_alignment - 1);
    uint64_t range = ((b.offset - aligned) + b.size + 3) & ~3ull;
    if (aligned + range > a->size) range = a->size - aligned;
    if (range > vk->info.max_storage_buffer_range) {
        set_error(vk, "a buffer of %llu MiB exceeds the device's maxStorageBufferRange (%llu MiB)",
                  (unsigned long long)(range >> 20), (unsigned long long)(vk->info.max_storage_buffer_range >> 20));
        return -1;
    }
    *out = (binding){.buffer = a->buffer, .offset = aligned, .range = range, .residual = (uint32_t)(b.offset - aligned)};
    return 0;
}

static uint64_t hash_bindings(const binding *b, uint32_t n) {
    uint64_t h = 1469598103934665603ull;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t v[3] = {(uint64_t)(uintptr_t)b[i].buffer, b[i].offset, b[i].range};
        for (int j = 0; j < 3; j++) { h ^= v[j]; h *= 1099511628211ull; h ^= h >> 29; }
    }
    return h;
}

static VkDescriptorSet new_set(puna_vk *vk) {
    enum { SETS_PER_POOL = 256 };
    if (vk->pool_count == 0 || vk->pool_used == SETS_PER_POOL) {
        VkDescriptorPoolSize size = {.type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .descriptorCount = SETS_PER_POOL * BINDINGS};
        VkDescriptorPoolCreateInfo dpci = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO, .maxSets = SETS_PER_POOL,
                                           .poolSizeCount = 1, .pPoolSizes = &size};
        VkDescriptorPool *pools = realloc(vk->pools, (vk->pool_count + 1) * sizeof *pools);
        if (!pools) { set_error(vk, "descriptors: out of host memory"); return VK_NULL_HANDLE; }
        vk->pools = pools;
        VkResult r = vk->vkCreateDescriptorPool(vk->device, &dpci, NULL, &vk->pools[vk->pool_count]);
        if (r != VK_SUCCESS) { set_error(vk, "%s failed (VkResult %d)", "vkCreateDescriptorPool", (int)r); return VK_NULL_HANDLE; }
        vk->pool_count++;
        vk->pool_used = 0;
    }
    VkDescriptorSetAllocateInfo dsai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                                        .descriptorPool = vk->pools[vk->pool_count - 1], .descriptorSetCount = 1,
                                        .pSetLayouts = &vk->set_layout};
    VkDescriptorSet set;
    VkResult r = vk->vkAllocateDescriptorSets(vk->device, &dsai, &set);
    if (r != VK_SUCCESS) { set_error(vk, "%s failed (VkResult %d)", "vkAllocateDescriptorSets", (int)r); return VK_NULL_HANDLE; }
    vk->pool_used++;
    return set;
}

// The descriptor set holding exactly these bindings, made once and reused afterwards.
static VkDescriptorSet get_set(puna_vk *vk, const binding *b, uint32_t n) {
    if (vk->descriptor_count * 2 >= vk->descriptor_capacity) {
        uint32_t cap = vk->descriptor_capacity ? 2 * vk->descriptor_capacity : 1024;
        descriptor_entry *table = calloc(cap, sizeof *table);
        if (!table) { set_error(vk, "descriptors: out of host memory"); return VK_NULL_HANDLE; }
        for (uint32_t i = 0; i < vk->descriptor_capacity; i++) {
            descriptor_entry *e = &vk->descriptors[i];
            if (e->set == VK_NULL_HANDLE) continue;
            binding tmp[BINDINGS];
            for (uint32_t j = 0; j < e->count; j++) tmp[j] = (binding){e->buffer[j], e->offset[j], e->range[j], 0};
            uint64_t slot = hash_bindings(tmp, e->count) & (cap - 1);
            while (table[slot].set != VK_NULL_HANDLE) slot = (slot + 1) & (cap - 1);
            table[slot] = *e;
        }
        free(vk->descriptors);
        vk->descriptors = table;
        vk->descriptor_capacity = cap;
    }
    uint64_t slot = hash_bindings(b, n) & (vk->descriptor_capacity - 1);
    for (;; slot = (slot + 1) & (vk->descriptor_capacity - 1)) {
        descriptor_entry *e = &vk->descriptors[slot];
        if (e->set == VK_NULL_HANDLE) break;
        if (e->count != n) continue;
        int same = 1;
        for (uint32_t j = 0; j < n && same; j++)
            same = e->buffer[j] == b[j].buffer && e->offset[j] == b[j].offset && e->range[j] == b[j].range;
        if (same) return e->set;
    }
    VkDescriptorSet set = new_set(vk);
    if (set == VK_NULL_HANDLE) return VK_NULL_HANDLE;
    VkDescriptorBufferInfo infos[BINDINGS];
    VkWriteDescriptorSet writes[BINDINGS];
    for (uint32_t j = 0; j < n; j++) {
        infos[j] = (VkDescriptorBufferInfo){.buffer = b[j].buffer, .offset = b[j].offset, .range = b[j].range};
        writes[j] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, .dstSet = set, .dstBinding = j,
                                           .descriptorCount = 1, .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                           .pBufferInfo = &infos[j]};
    }
    vk->vkUpdateDescriptorSets(vk->device, n, writes, 0, NULL);
    descriptor_entry *e = &vk->descriptors[slot];
    memset(e, 0, sizeof *e);
    for (uint32_t j = 0; j < n; j++) { e->buffer[j] = b[j].buffer; e->offset[j] = b[j].offset; e->range[j] = b[j].range; }
    e->count = n;
    e->set = set;
    vk->descriptor_count++;
    return set;
}

// ---- recording -----------------------------------------------------------------------------------
int puna_vk_begin(puna_vk *vk) {
    if (vk->error[0]) return -1;
    for (uint32_t i = 0; i < vk->retired_count; i++) puna_vk_free(vk, vk->retired[i]);
    vk->retired_count = 0;
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                   .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    CHECK(vk, vk->vkResetCommandBuffer(vk->cmd, 0), "vkResetCommandBuffer");
    CHECK(vk, vk->vkBeginCommandBuffer(vk->cmd, &bi), "vkBeginCommandBuffer");
    vk->recording = 1;
    return 0;
}

// Every op's writes become visible to the next op's reads and writes (shader or transfer).
static void barrier(puna_vk *vk) {
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                                           VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT};
    VkPipelineStageFlags stages = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    vk->vkCmdPipelineBarrier(vk->cmd, stages, stages, 0, 1, &mb, 0, NULL, 0, NULL);
}

int puna_vk_submit(puna_vk *vk) {
    if (!vk->recording) { set_error(vk, "submit without begin"); return -1; }
    vk->recording = 0;
    // Results written by shaders or copies become visible to the host after the fence.
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_HOST_READ_BIT};
    vk->vkCmdPipelineBarrier(vk->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                             VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
    CHECK(vk, vk->vkEndCommandBuffer(vk->cmd), "vkEndCommandBuffer");
    if (vk->error[0]) return -1;   // an op failed while recording: do not run a partial graph
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &vk->cmd};
    CHECK(vk, vk->vkResetFences(vk->device, 1, &vk->fence), "vkResetFences");
    CHECK(vk, vk->vkQueueSubmit(vk->queue, 1, &si, vk->fence), "vkQueueSubmit");
    VkResult r = vk->vkWaitForFences(vk->device, 1, &vk->fence, VK_TRUE, vk->timeout_ns);
    if (r == VK_TIMEOUT) {
        mark_hung(vk);
        set_error(vk, "the GPU did not finish within %.0f s (driver hang? raise PUNA_VK_TIMEOUT_S)", vk->timeout_ns / 1e9);
        return -1;
    }
    CHECK(vk, r, "vkWaitForFences");
    return 0;
}

// Binds pipeline `name` with buffers b[0..n) and push constants, dispatches, adds the barrier.
// *residual0 receives the unaligned byte offset of b[0] (the weights) when asked for.
static int dispatch(puna_vk *vk, const char *name, const puna_vk_buffer *b, uint32_t n, const void *push,
                    uint32_t push_bytes, uint32_t gx, uint32_t gy, uint32_t gz) {
    if (!vk->recording) { set_error(vk, "%s recorded outside begin/submit", name); return -1; }
    if (vk->error[0]) return -1;
    if (gx == 0 || gy == 0 || gz == 0) return 0;
    pipeline_entry *entry = get_pipeline(vk, name);
    if (!entry) return -1;
    binding bind[BINDINGS];
    for (uint32_t i = 0; i < n; i++) if (bind_buffer(vk, b[i], &bind[i]) != 0) return -1;
    for (uint32_t i = 1; i < n; i++)
        if (bind[i].residual) { set_error(vk, "%s: misaligned activation buffer", name); return -1; }
    VkDescriptorSet set = get_set(vk, bind, n);
    if (set == VK_NULL_HANDLE) return -1;
    vk->vkCmdBindPipeline(vk->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, entry->pipeline);
    vk->vkCmdBindDescriptorSets(vk->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, vk->pipeline_layout, 0, 1, &set, 0, NULL);
    vk->vkCmdPushConstants(vk->cmd, vk->pipeline_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes, push);
    vk->vkCmdDispatch(vk->cmd, gx, gy, gz);
    barrier(vk);
    entry->dispatches++;
    return 0;
}

void puna_vk_copy(puna_vk *vk, puna_vk_buffer src, uint64_t src_off, puna_vk_buffer dst, uint64_t dst_off, uint64_t bytes) {
    if (!vk->recording || vk->error[0] || bytes == 0) return;
    if (src.arena >= vk->arena_count || dst.arena >= vk->arena_count || src_off + bytes > src.size || dst_off + bytes > dst.size) {
        set_error(vk, "copy: range outside the buffers");
        return;
    }
    VkBufferCopy region = {.srcOffset = src.offset + src_off, .dstOffset = dst.offset + dst_off, .size = bytes};
    vk->vkCmdCopyBuffer(vk->cmd, vk->arenas[src.arena].buffer, vk->arenas[dst.arena].buffer, 1, &region);
    barrier(vk);
}

static const char *type_suffix(int type) {
    switch (type) {
    case PUNA_TYPE_F32: return "f32";
    case PUNA_TYPE_F16: return "f16";
    case PUNA_TYPE_Q4_0: return "q4_0";
    case PUNA_TYPE_Q4_1: return "q4_1";
    case PUNA_TYPE_Q5_0: return "q5_0";
    case PUNA_TYPE_Q5_1: return "q5_1";
    case PUNA_TYPE_Q8_0: return "q8_0";
    case PUNA_TYPE_Q4_K: return "q4_k";
    case PUNA_TYPE_Q5_K: return "q5_k";
    case PUNA_TYPE_Q6_K: return "q6_k";
    case PUNA_TYPE_BNB4: return "bnb4";
    case PUNA_TYPE_BNB_INT8: return "bnb_int8";
    default: return NULL;
    }
}

// Whether the int8 tier serves this weight type now: K-quants take activation blocks of 256, the
// simple quants blocks of 32 (0: not served).
static uint32_t int8_block(const puna_vk *vk, int type) {
    if (vk->tier < PUNA_VK_TIER_INT8 || puna_kernels_activation_levels() != 1) return 0;
    switch (type) {
    case PUNA_TYPE_Q4_0: case PUNA_TYPE_Q4_1: case PUNA_TYPE_Q5_0: case PUNA_TYPE_Q5_1: case PUNA_TYPE_Q8_0: return 32;
    case PUNA_TYPE_Q4_K: case PUNA_TYPE_Q5_K: case PUNA_TYPE_Q6_K: return 256;
    default: return 0;
    }
}

// The int8 tier's matmul: quantize x on the GPU (quantize_q8), then the integer block dots
// (matvec_dot_*), one token per grid layer as the matvec shaders. Returns 1 when it recorded the
// matmul (or set an error), 0 to leave it to the float shaders.
static int int8_matmul(puna_vk *vk, int type, const char *suffix, puna_vk_buffer w, uint32_t rows, uint32_t cols,
                       uint64_t row_bytes, uint64_t rows_per_part, puna_vk_buffer x, uint32_t x_offset, puna_vk_buffer y,
                       uint32_t y_offset, uint32_t n_tokens, float alpha, int accumulate) {
    uint32_t block = int8_block(vk, type);
    if (block == 0 || cols % block != 0) return 0;
    if (n_tokens > 65535) { set_error(vk, "matmul: %u tokens in one dispatch (at most 65535)", n_tokens); return 1; }
    // Per token: the 8-bit values, 4 to a word, then one f32 scale per block.
    uint32_t stride = cols / 4 + cols / block;
    uint64_t need = (uint64_t)stride * 4 * n_tokens;
    if (!vk->act_live || vk->act.size < need) {
        if (vk->act_live) {
            if (vk->retired_count == sizeof vk->retired / sizeof vk->retired[0]) { set_error(vk, "matmul: activation scratch regrown too often"); return 1; }
            vk->retired[vk->retired_count++] = vk->act;
        }
        uint64_t bytes = vk->act_live && 2 * vk->act.size > need ? 2 * vk->act.size : need;
        vk->act_live = 0;
        if (puna_vk_alloc(vk, bytes, PUNA_VK_MEMORY_DEVICE, 1, &vk->act) != 0) return 1;
        vk->act_live = 1;
    }
    puna_vk_buffer act = vk->act;
    act.size = need;
    struct { uint32_t cols, x_off, x_stride, block, stride; } q = {cols, x_offset, cols, block, stride};
    puna_vk_buffer qbufs[2] = {x, act};
    if (dispatch(vk, "quantize_q8", qbufs, 2, &q, sizeof q, (cols / 4 + 63) / 64, n_tokens, 1) != 0) return 1;
    char name[32];
    snprintf(name, sizeof name, "matvec_dot_%s%s", suffix, vk->fma_mode == PUNA_VK_FMA_F64 ? "_f64" : "");
    for (uint64_t r0 = 0; r0 < rows; r0 += rows_per_part) {
        uint32_t n_rows = (uint32_t)(rows - r0 < rows_per_part ? rows - r0 : rows_per_part);
        puna_vk_buffer part = w;
        part.offset += r0 * row_bytes;
        part.size = n_rows * row_bytes;
        binding wb;
        if (bind_buffer(vk, part, &wb) != 0) return 1;
        uint32_t groups = (n_rows + 3) / 4;   // 4 rows per workgroup
        uint32_t gx = groups < 65535 ? groups : 65535, gy = (groups + gx - 1) / gx;
        struct { uint32_t rows, cols, row_bytes, w_off, a_stride, y_off, y_stride, groups_x, accumulate; float alpha; } p = {
            n_rows, cols, (uint32_t)row_bytes, wb.residual, stride, y_offset + (uint32_t)r0, rows, gx,
            (uint32_t)(accumulate != 0), alpha};
        puna_vk_buffer bufs[3] = {part, act, y};
        if (dispatch(vk, name, bufs, 3, &p, sizeof p, gx, gy, n_tokens) != 0) return 1;
    }
    return 1;
}

void puna_vk_matmul(puna_vk *vk, int type, puna_vk_buffer w, const float *code_table, uint32_t rows, uint32_t cols,
                    puna_vk_buffer x, uint32_t x_offset, puna_vk_buffer y, uint32_t y_offset, uint32_t n_tokens,
                    float alpha, int flags) {
    int accumulate = (flags & PUNA_VK_MATMUL_ACCUMULATE) != 0;
    const char *suffix = type_suffix(type);
    if (!suffix) { set_error(vk, "matmul: no shader for weight type %d", type); return; }
    if (type == PUNA_TYPE_BNB4 && !code_table) { set_error(vk, "matmul: 4-bit bitsandbytes weights need their code table"); return; }
    float table[16] = {0};
    if (type == PUNA_TYPE_BNB4) memcpy(table, code_table, sizeof table);
    if (cols % (uint32_t)column_multiple(type) != 0) { set_error(vk, "matmul: %u columns is not a multiple of %d", cols, column_multiple(type)); return; }
    uint64_t row_bytes = puna_vk_matrix_bytes(type, 1, cols);
    // Split the rows so each binding stays inside maxStorageBufferRange (e.g. a big output matrix
    // on a device with the 128 MiB minimum).
    uint64_t limit = vk->info.max_storage_buffer_range - vk->min_offset_alignment - 4;
    uint64_t rows_per_part = limit / row_bytes;
    if (rows_per_part == 0) { set_error(vk, "matmul: one row exceeds maxStorageBufferRange"); return; }
    if (int8_matmul(vk, type, suffix, w, rows, cols, row_bytes, rows_per_part, x, x_offset, y, y_offset, n_tokens, alpha,
                    accumulate))
        return;
    char name[32];
    // (The int8 tier above is row-independent already: one token per grid layer for any count.)
    int tiled = n_tokens > 1 || (flags & PUNA_VK_MATMUL_ROW_INDEPENDENT) != 0;
    // One token that must get the tiled shader's bits: its one-token variant (matmul1_*, the same
    // sums without the 31 idle token columns of a 32 x 32 tile).
    int one_token = tiled && n_tokens == 1;
    snprintf(name, sizeof name, "%s_%s", one_token ? "matmul1" : tiled ? "matmul" : "matvec", suffix);
    // fp16 tier: F16 rows read as f16vec4, so they must start 8-byte aligned in the binding.
    int half_rows = !tiled && type == PUNA_TYPE_F16 && vk->tier >= PUNA_VK_TIER_FP16 && row_bytes % 8 == 0;
    for (uint64_t r0 = 0; r0 < rows; r0 += rows_per_part) {
        uint32_t n_rows = (uint32_t)(rows - r0 < rows_per_part ? rows - r0 : rows_per_part);
        puna_vk_buffer part = w;
        part.offset += r0 * row_bytes;
        part.size = n_rows * row_bytes;
        binding wb;
        if (bind_buffer(vk, part, &wb) != 0) return;
        puna_vk_buffer bufs[3] = {part, x, y};
        if (half_rows && wb.residual % 8 == 0) snprintf(name, sizeof name, "matvec_f16_h");
        else if (!tiled) snprintf(name, sizeof name, "matvec_%s", suffix);
        if (!tiled) {
            uint32_t groups = (n_rows + 1) / 2;   // 2 rows per workgroup (specialization constant 1)
            uint32_t gx = groups < 65535 ? groups : 65535, gy = (groups + gx - 1) / gx;
            struct { uint32_t rows, cols, row_bytes, w_off, x_off, y_off, x_stride, y_stride, groups_x, accumulate; float alpha, table[16]; } p = {
                n_rows, cols, (uint32_t)row_bytes, wb.residual, x_offset, y_offset + (uint32_t)r0, cols, rows, gx,
                (uint32_t)(accumulate != 0), alpha, {0}};
            memcpy(p.table, table, sizeof table);
            _Static_assert(sizeof p <= PUSH_BYTES, "matmul push constants");
            if (dispatch(vk, name, bufs, 3, &p, sizeof p, gx, gy, n_tokens) != 0) return;
        } else {
            struct { uint32_t rows, cols, row_bytes, w_off, x_off, y_off, x_stride, y_stride, n_tokens, accumulate; float alpha, table[16]; } p = {
                n_rows, cols, (uint32_t)row_bytes, wb.residual, x_offset, y_offset + (uint32_t)r0, cols, rows, n_tokens,
                (uint32_t)(accumulate != 0), alpha, {0}};
            memcpy(p.table, table, sizeof table);
            _Static_assert(sizeof p <= PUSH_BYTES, "matmul push constants");
            // matmul1 covers 64 rows of its one token per workgroup; matmul a 32 x 32 tile.
            uint32_t gx = one_token ? (n_rows + 63) / 64 : (n_rows + 31) / 32;
            uint32_t gy = one_token ? 1 : (n_tokens + 31) / 32;
            if (dispatch(vk, name, bufs, 3, &p, sizeof p, gx, gy, 1) != 0) return;
        }
    }
}

void puna_vk_rmsnorm(puna_vk *vk, puna_vk_buffer weight, puna_vk_buffer x, uint32_t x_offset, puna_vk_buffer out,
                     uint32_t out_offset, uint32_t n, uint32_t n_tokens, float eps) {
    // One workgroup per row; rows past the 65535 workgroups one dimension must allow go in further
    // dispatches (per-head norms run over n_tokens * n_heads rows).
    for (uint32_t r0 = 0; r0 < n_tokens; r0 += 65535) {
        uint32_t rows = n_tokens - r0 < 65535 ? n_tokens - r0 : 65535;
        struct { uint32_t n, x_off, out_off; float eps; } p = {n, x_offset + r0 * n, out_offset + r0 * n, eps};
        puna_vk_buffer bufs[3] = {weight, x, out};
        if (dispatch(vk, "rmsnorm", bufs, 3, &p, sizeof p, rows, 1, 1) != 0) return;
    }
}

void puna_vk_rope(puna_vk *vk, puna_vk_buffer table, puna_vk_buffer vec, uint32_t n_tokens, uint32_t n_heads,
                  uint32_t head_dim, uint32_t rope_pairs, int neox) {
    if (2 * rope_pairs > head_dim) { set_error(vk, "rope: %u rotated dims exceed the head size %u", 2 * rope_pairs, head_dim); return; }
    struct { uint32_t n_tokens, n_heads, head_dim, pairs, stride, neox; } p = {
        n_tokens, n_heads, head_dim, rope_pairs, n_heads * head_dim, (uint32_t)(neox != 0)};
    puna_vk_buffer bufs[2] = {table, vec};
    dispatch(vk, "rope", bufs, 2, &p, sizeof p, (n_heads * rope_pairs + 63) / 64, n_tokens, 1);
}

uint64_t puna_vk_kv_row_bytes(int format, uint32_t kv_dim) {
    switch (format) {
    case PUNA_VK_KV_F32: return (uint64_t)kv_dim * 4;
    case PUNA_VK_KV_F16: return kv_dim % 2 ? 0 : (uint64_t)kv_dim * 2;
    case PUNA_VK_KV_Q8_0: return kv_dim % 32 ? 0 : (uint64_t)kv_dim / 32 * 34;
    default: return 0;
    }
}

void puna_vk_kv_store(puna_vk *vk, puna_vk_buffer k, puna_vk_buffer v, uint32_t kv_offset, puna_vk_buffer k_cache,
                      puna_vk_buffer v_cache, uint32_t n_tokens, uint32_t kv_dim, uint32_t pos0, int format, uint32_t ring_rows) {
    if (kv_dim % 2) { set_error(vk, "kv_store: odd KV width %u", kv_dim); return; }
    if (puna_vk_kv_row_bytes(format, kv_dim) == 0) { set_error(vk, "kv_store: format %d cannot hold rows of %u", format, kv_dim); return; }
    if (ring_rows > 0 && n_tokens > ring_rows) { set_error(vk, "kv_store: %u tokens overrun a ring of %u rows", n_tokens, ring_rows); return; }
    struct { uint32_t n_tokens, kv_dim, pos0, format, ring, src_off; } p = {n_tokens, kv_dim, pos0, (uint32_t)format, ring_rows, kv_offset};
    puna_vk_buffer bufs[4] = {k, v, k_cache, v_cache};
    // q8_0: one invocation per block of 32 (keys and values); else per pair of values.
    uint32_t per_row = format == PUNA_VK_KV_Q8_0 ? kv_dim / 32 : kv_dim / 2;
    dispatch(vk, "kv_store", bufs, 4, &p, sizeof p, (per_row + 63) / 64, n_tokens, 1);
}

void puna_vk_attention(puna_vk *vk, puna_vk_buffer q, uint32_t q_offset, puna_vk_buffer k_cache, puna_vk_buffer v_cache,
                       puna_vk_buffer out, uint32_t out_offset, uint32_t n_tokens, uint32_t pos0, uint32_t n_heads,
                       uint32_t n_kv_heads, uint32_t head_dim, int format, uint32_t window, uint32_t ring_rows) {
    if (head_dim > 256 || n_kv_heads == 0 || n_heads % n_kv_heads) {
        set_error(vk, "attention: unsupported head layout (head_dim %u, %u heads, %u KV heads)", head_dim, n_heads, n_kv_heads);
        return;
    }
    // As puna_attention_ex: a ring holds every position a token sees plus the step's later tokens.
    if (ring_rows > 0 && (window == 0 || (uint64_t)ring_rows < (uint64_t)window + n_tokens - 1)) {
        set_error(vk, "attention: a ring of %u rows cannot hold a window of %u over %u tokens", ring_rows, window, n_tokens);
        return;
    }
    if (puna_vk_kv_row_bytes(format, n_kv_heads * head_dim) == 0) {
        set_error(vk, "attention: format %d cannot hold rows of %u", format, n_kv_heads * head_dim);
        return;
    }
    struct { uint32_t n_tokens, pos0, n_heads, n_kv_heads, head_dim, kv_dim, format; float scale; uint32_t window, ring, q_off, o_off; } p = {
        n_tokens, pos0, n_heads, n_kv_heads, head_dim, n_kv_heads * head_dim, (uint32_t)format,
        1.0f / sqrtf((float)head_dim), window, ring_rows, q_offset, out_offset};
    puna_vk_buffer bufs[4] = {q, k_cache, v_cache, out};
    dispatch(vk, "attention", bufs, 4, &p, sizeof p, n_heads, n_tokens, 1);
}

void puna_vk_swiglu(puna_vk *vk, puna_vk_buffer gate, puna_vk_buffer up, uint32_t n) {
    struct { uint32_t n; } p = {n};
    puna_vk_buffer bufs[2] = {gate, up};
    uint32_t groups = (n + 63) / 64;
    uint32_t gx = groups < 65535 ? groups : 65535, gy = (groups + gx - 1) / gx;
    dispatch(vk, "swiglu", bufs, 2, &p, sizeof p, gx, gy, 1);
}

void puna_vk_bias(puna_vk *vk, puna_vk_buffer bias, puna_vk_buffer y, uint32_t n, uint32_t n_tokens) {
    struct { uint32_t n, n_tokens; } p = {n, n_tokens};
    puna_vk_buffer bufs[2] = {bias, y};
    dispatch(vk, "bias", bufs, 2, &p, sizeof p, (n + 63) / 64, n_tokens, 1);
}

void puna_vk_rope_table(float *out, int n_tokens, int pos0, int rope_dims, float freq_base, const float *factors,
                        float attn_factor) {
    // Same steps as puna_rope_ex in Sources/CPuna/ops.c, so the angles and the scaled cos/sin are
    // bit-identical.
    int pairs = rope_dims / 2;
    for (int i = 0; i < pairs; i++) {
        float inv_freq = 1.0f / powf(freq_base, (float)(2 * i) / (float)rope_dims);
        for (int t = 0; t < n_tokens; t++) {
            float theta = (float)(pos0 + t) * inv_freq;
            if (factors) theta /= factors[i];
            out[2 * (t * pairs + i)] = cosf(theta) * attn_factor;
            out[2 * (t * pairs + i) + 1] = sinf(theta) * attn_factor;
        }
    }
}
