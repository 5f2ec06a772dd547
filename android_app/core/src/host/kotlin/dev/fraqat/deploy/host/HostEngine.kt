package dev.fraqat.deploy.host

import ai.onnxruntime.OrtLoggingLevel
import dev.fraqat.deploy.core.BenchmarkEngine
import dev.fraqat.deploy.core.DeviceInfo
import dev.fraqat.deploy.core.DeviceProbe
import dev.fraqat.deploy.core.FileTools
import dev.fraqat.deploy.core.Memory
import dev.fraqat.deploy.core.OrtBackend
import dev.fraqat.deploy.core.OrtPlatform
import dev.fraqat.deploy.core.Request
import dev.fraqat.deploy.core.Schemas
import java.io.File
import kotlin.system.exitProcess

/**
 * The app's engine on a desktop JVM: the same [BenchmarkEngine] and [OrtBackend] as `BenchmarkActivity`, with the
 * desktop ONNX Runtime Java package and the QNN plugin EP of the `onnxruntime-qnn` x86_64 wheel, whose HTP is the
 * host *simulator* (told which SoC to simulate by the request's `soc_model`, 69 = SM8750 by default).
 *
 *     java -cp <core.jar>:<onnxruntime.jar> dev.fraqat.deploy.host.HostEngineKt \
 *         --files-dir DIR --request DIR/runs/<id>/request.json --schemas fraqat_deploy/device/schemas \
 *         --qnn-dir <site-packages>/onnxruntime_qnn [--manufacturer M --model M --soc S --android-sdk N]
 *
 * Like the activity it reads only requests under the files folder and writes `status.json`, `result.json` and the
 * images beside the request. The result says `runtime: htp-simulator`: its timings and memory are the host's.
 * Exit status 0 when a `result.json` was written (an error result too), 2 on bad arguments, 3 for a refused request.
 */
fun main(args: Array<String>) {
    val opts = parseArgs(args) ?: run {
        System.err.println("usage: HostEngine --files-dir DIR --request FILE --schemas DIR --qnn-dir DIR [--manufacturer M] [--model M] [--soc S] [--android-sdk N]")
        exitProcess(2)
    }
    val filesDir = File(opts.getValue("files-dir")).absoluteFile
    val request = File(opts.getValue("request")).let { if (it.isAbsolute) it else File(filesDir, it.path) }
    if (!request.canonicalPath.startsWith(filesDir.canonicalPath + File.separator)) {
        System.err.println("refusing ${request.path}: requests live under $filesDir")
        exitProcess(3)
    }
    val platform = HostSimulator(
        File(opts.getValue("qnn-dir")),
        manufacturer = opts["manufacturer"] ?: "host",
        model = opts["model"] ?: "QNN HTP simulator (${System.getProperty("os.arch")})",
        soc = opts["soc"] ?: "simulated",
        androidSdk = opts["android-sdk"]?.toIntOrNull(),
    )
    val schemas = Schemas.fromDirectory(File(opts.getValue("schemas")))
    val engine = BenchmarkEngine(filesDir, request, OrtBackend(platform), schemas, HostProbe, log = { println(it) })
    println("wrote ${engine.run()}")
}

private val KNOWN = setOf("files-dir", "request", "schemas", "qnn-dir", "manufacturer", "model", "soc", "android-sdk")
private val REQUIRED = listOf("files-dir", "request", "schemas", "qnn-dir")

private fun parseArgs(args: Array<String>): Map<String, String>? {
    val out = HashMap<String, String>()
    var i = 0
    while (i < args.size) {
        val key = args[i].removePrefix("--")
        if (!args[i].startsWith("--") || key !in KNOWN || i + 1 >= args.size) return null
        out[key] = args[i + 1]
        i += 2
    }
    return if (REQUIRED.all { it in out }) out else null
}

/** The host HTP simulator from the `onnxruntime-qnn` wheel's folder (the plugin EP and the QNN x86_64 libraries). */
class HostSimulator(
    private val qnnDir: File,
    private val manufacturer: String,
    private val model: String,
    private val soc: String,
    private val androidSdk: Int?,
) : OrtPlatform {
    override fun epLibraryPath(): String = File(qnnDir, "libonnxruntime_providers_qnn.so").absolutePath

    override fun device(onnxruntimeVersion: String?) = DeviceInfo(
        manufacturer = manufacturer,
        model = model,
        soc = soc,
        androidSdk = androidSdk,
        runtime = "htp-simulator",
        qnnVersion = runCatching { FileTools.qnnBuildId(qnnDir, listOf("libQnnSaver.so", "libQnnSystem.so")) }.getOrNull(),
        onnxruntimeVersion = onnxruntimeVersion,
    )

    /** Which SoC's HTP to simulate: the one the model was compiled for (the phone's HTP knows its own). */
    override fun providerOptions(request: Request): Map<String, String> =
        mapOf("soc_model" to (request.socModel ?: DEFAULT_SOC_MODEL).toString())

    // the host's two cores are shared; the simulator's timings are not phone figures anyway
    override val intraOpThreads: Int get() = 1

    // the QNN EP warns on every session about features absent on Linux: errors only
    override val logLevel: OrtLoggingLevel get() = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR

    companion object {
        const val DEFAULT_SOC_MODEL = 69
    }
}

/** The JVM process's own peak resident memory (VmHWM): host figures, labelled so. No thermal status on a host. */
object HostProbe : DeviceProbe {
    override fun memory(): Memory {
        val kb = runCatching {
            File("/proc/self/status").readLines().firstOrNull { it.startsWith("VmHWM:") }?.split(Regex("\\s+"))?.get(1)?.toDouble()
        }.getOrNull()
        return Memory(peakPss = null, peakRss = kb?.div(1024.0), nativeHeap = null, source = "host process VmHWM (simulator)")
    }
}
