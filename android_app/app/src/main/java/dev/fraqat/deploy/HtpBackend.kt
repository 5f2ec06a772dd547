package dev.fraqat.deploy

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtEpDevice
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtLoggingLevel
import ai.onnxruntime.OrtSession
import ai.onnxruntime.TensorInfo as OrtTensorInfo
import ai.onnxruntime.qnnpluginep.getEpName as qnnEpName
import ai.onnxruntime.qnnpluginep.getLibraryPath as qnnLibraryPath
import android.content.Context
import android.os.Build
import android.system.Os
import android.util.Log
import dev.fraqat.deploy.core.Backend
import dev.fraqat.deploy.core.BenchError
import dev.fraqat.deploy.core.ComponentSession
import dev.fraqat.deploy.core.DType
import dev.fraqat.deploy.core.DeviceInfo
import dev.fraqat.deploy.core.ErrorKind
import dev.fraqat.deploy.core.FileTools
import dev.fraqat.deploy.core.FloatTensor
import dev.fraqat.deploy.core.IntTensor
import dev.fraqat.deploy.core.LongTensor
import dev.fraqat.deploy.core.Request
import dev.fraqat.deploy.core.Tensor
import dev.fraqat.deploy.core.TensorInfo
import java.io.File
import java.nio.FloatBuffer
import java.nio.IntBuffer
import java.nio.LongBuffer

private const val TAG = "fraqat"

/**
 * Compiled components as ONNX Runtime sessions on the Hexagon NPU: the EPContext model (`<name>_ctx.onnx`, its
 * `.bin` beside it) opened with the QNN plugin execution provider, backend `htp`. There is no silent CPU fallback:
 * without the QNN EP or an HTP the backend says so ([ErrorKind.HTP_UNAVAILABLE]); an EPContext node cannot run on
 * the CPU, so a context binary the HTP refuses is an error ([ErrorKind.HTP_ERROR]). Only the float <-> quantized
 * conversions at the graph boundary run on the CPU, by design (the CLI's compile step fails on any other CPU node).
 */
class HtpBackend(private val context: Context) : Backend {
    private val env: OrtEnvironment = OrtEnvironment.getEnvironment(OrtLoggingLevel.ORT_LOGGING_LEVEL_WARNING, "fraqat")
    private val nativeLibs = File(context.applicationInfo.nativeLibraryDir)

    override val device: DeviceInfo by lazy {
        DeviceInfo(
            manufacturer = Build.MANUFACTURER,
            model = Build.MODEL,
            soc = Build.SOC_MODEL,
            androidSdk = Build.VERSION.SDK_INT,
            runtime = "htp",
            qnnVersion = runCatching { FileTools.qnnBuildId(nativeLibs) }.getOrNull(),
            onnxruntimeVersion = runCatching { env.version }.getOrNull(),
        )
    }

    private val qnnDevices: List<OrtEpDevice> by lazy { registerQnn() }

    private fun registerQnn(): List<OrtEpDevice> {
        if (!Build.SOC_MANUFACTURER.equals("QTI", ignoreCase = true) && !Build.SOC_MANUFACTURER.contains("qualcomm", ignoreCase = true)) {
            throw BenchError(ErrorKind.HTP_UNAVAILABLE, "this phone's SoC is not Qualcomm's (${Build.SOC_MANUFACTURER} ${Build.SOC_MODEL}): it has no Hexagon HTP")
        }
        // The HTP backend finds its DSP-side skel library through ADSP_LIBRARY_PATH: the app's extracted libraries first.
        Os.setenv("ADSP_LIBRARY_PATH", "${nativeLibs.absolutePath};/vendor/lib/rfsa/adsp;/vendor/dsp/cdsp;/system/lib/rfsa/adsp;/dsp", true)
        try {
            env.registerExecutionProviderLibrary(EP_REGISTRATION, qnnLibraryPath())
        } catch (e: OrtException) {
            if (e.message?.contains("already registered") != true) {
                throw BenchError(ErrorKind.HTP_UNAVAILABLE, "cannot load the QNN execution provider: ${e.message}")
            }
        }
        val devices = env.epDevices.filter { it.epName == qnnEpName() }
        if (devices.isEmpty()) throw BenchError(ErrorKind.HTP_UNAVAILABLE, "the QNN execution provider offers no device on this phone")
        Log.i(TAG, "QNN EP devices: ${devices.size}")
        return devices
    }

    override fun open(component: String, ctxOnnx: File, request: Request): ComponentSession {
        val options = OrtSession.SessionOptions()
        val qnn = linkedMapOf("backend_type" to "htp", "htp_performance_mode" to (request.config.performanceMode ?: "burst"))
        options.addExecutionProvider(qnnDevices, qnn)
        // "1" would refuse the boundary conversions the EPContext model keeps on the CPU (see the class comment)
        options.addConfigEntry("session.disable_cpu_ep_fallback", "0")
        options.setIntraOpNumThreads(2)
        val session = try {
            env.createSession(ctxOnnx.absolutePath, options)
        } catch (e: OrtException) {
            val message = e.message.orEmpty().lineSequence().firstOrNull().orEmpty()
            val unavailable = listOf("Unable to load backend", "Failed to load", "no HTP", "dlopen").any { message.contains(it, ignoreCase = true) }
            throw BenchError(if (unavailable) ErrorKind.HTP_UNAVAILABLE else ErrorKind.HTP_ERROR, "cannot open ${ctxOnnx.name} on the HTP: $message")
        } finally {
            options.close()
        }
        return HtpSession(env, component, session)
    }

    companion object {
        const val EP_REGISTRATION = "QNNExecutionProvider"
    }
}

private class HtpSession(private val env: OrtEnvironment, private val component: String, private val session: OrtSession) : ComponentSession {
    private val infos: Map<String, OrtTensorInfo> = session.inputInfo.mapValues { it.value.info as OrtTensorInfo }

    override val inputs: Map<String, TensorInfo> = infos.mapValues { (_, info) ->
        val dtype = when (info.type) {
            OnnxJavaType.FLOAT -> DType.FLOAT32
            OnnxJavaType.INT64 -> DType.INT64
            OnnxJavaType.INT32 -> DType.INT32
            else -> null
        }
        TensorInfo(dtype, info.shape.map { it.toInt() }.toIntArray())
    }

    override fun run(feed: Map<String, Tensor>): Map<String, Tensor> {
        val tensors = feed.mapValues { (name, t) -> onnx(name, t) }
        try {
            session.run(tensors).use { result ->
                val out = LinkedHashMap<String, Tensor>()
                for ((name, value) in result) out[name] = fromOnnx(name, value as OnnxTensor)
                return out
            }
        } catch (e: OrtException) {
            throw BenchError(ErrorKind.HTP_ERROR, "$component failed on the HTP: ${e.message?.lineSequence()?.firstOrNull()}")
        } finally {
            tensors.values.forEach { it.close() }
        }
    }

    /** A tensor of the dtype the graph expects (token ids arrive as int64 from the tokenizer, for instance). */
    private fun onnx(name: String, t: Tensor): OnnxTensor {
        val shape = t.shape.map { it.toLong() }.toLongArray()
        val want = infos[name]?.type
        return when {
            want == OnnxJavaType.INT32 && t is LongTensor -> OnnxTensor.createTensor(env, IntBuffer.wrap(IntArray(t.size) { t.data[it].toInt() }), shape)
            want == OnnxJavaType.INT64 && t is IntTensor -> OnnxTensor.createTensor(env, LongBuffer.wrap(LongArray(t.size) { t.data[it].toLong() }), shape)
            t is FloatTensor -> OnnxTensor.createTensor(env, FloatBuffer.wrap(t.data), shape)
            t is LongTensor -> OnnxTensor.createTensor(env, LongBuffer.wrap(t.data), shape)
            t is IntTensor -> OnnxTensor.createTensor(env, IntBuffer.wrap(t.data), shape)
            else -> throw BenchError(ErrorKind.INTERNAL, "cannot feed ${t.describe()} to $name")
        }
    }

    private fun fromOnnx(name: String, value: OnnxTensor): Tensor {
        val shape = value.info.shape.map { it.toInt() }.toIntArray()
        return when (value.info.type) {
            OnnxJavaType.FLOAT -> FloatTensor(shape, value.floatBuffer.let { b -> FloatArray(b.remaining()).also { b.get(it) } })
            OnnxJavaType.INT64 -> LongTensor(shape, value.longBuffer.let { b -> LongArray(b.remaining()).also { b.get(it) } })
            OnnxJavaType.INT32 -> IntTensor(shape, value.intBuffer.let { b -> IntArray(b.remaining()).also { b.get(it) } })
            else -> throw BenchError(ErrorKind.HTP_ERROR, "$component output $name is ${value.info.type}, not float32/int64/int32")
        }
    }

    override fun close() = session.close()
}
