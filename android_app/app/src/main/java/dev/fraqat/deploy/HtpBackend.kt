package dev.fraqat.deploy

import ai.onnxruntime.qnnpluginep.getLibraryPath as qnnLibraryPath
import android.content.Context
import android.os.Build
import android.system.Os
import dev.fraqat.deploy.core.Backend
import dev.fraqat.deploy.core.BenchError
import dev.fraqat.deploy.core.DeviceInfo
import dev.fraqat.deploy.core.ErrorKind
import dev.fraqat.deploy.core.FileTools
import dev.fraqat.deploy.core.OrtBackend
import dev.fraqat.deploy.core.OrtPlatform
import java.io.File

/**
 * The phone's Hexagon NPU: the core's [OrtBackend] (sessions, the QNN plugin EP registration, tensors: plain Kotlin
 * over the ONNX Runtime Java API, run on the host simulator by the tests) with what only Android has: the SoC check,
 * the app's native library folder and the DSP library path.
 */
class HtpBackend(context: Context) : Backend by OrtBackend(AndroidHtp(context))

private class AndroidHtp(context: Context) : OrtPlatform {
    private val nativeLibs = File(context.applicationInfo.nativeLibraryDir)

    override fun prepare() {
        if (!Build.SOC_MANUFACTURER.equals("QTI", ignoreCase = true) && !Build.SOC_MANUFACTURER.contains("qualcomm", ignoreCase = true)) {
            throw BenchError(ErrorKind.HTP_UNAVAILABLE, "this phone's SoC is not Qualcomm's (${Build.SOC_MANUFACTURER} ${Build.SOC_MODEL}): it has no Hexagon HTP")
        }
        // The HTP backend finds its DSP-side skel library through ADSP_LIBRARY_PATH: the app's extracted libraries first.
        Os.setenv("ADSP_LIBRARY_PATH", "${nativeLibs.absolutePath};/vendor/lib/rfsa/adsp;/vendor/dsp/cdsp;/system/lib/rfsa/adsp;/dsp", true)
    }

    override fun epLibraryPath(): String = qnnLibraryPath()

    override fun device(onnxruntimeVersion: String?) = DeviceInfo(
        manufacturer = Build.MANUFACTURER,
        model = Build.MODEL,
        soc = Build.SOC_MODEL,
        androidSdk = Build.VERSION.SDK_INT,
        runtime = "htp",
        qnnVersion = runCatching { FileTools.qnnBuildId(nativeLibs) }.getOrNull(),
        onnxruntimeVersion = onnxruntimeVersion,
    )
}
