//! Where networks run: the `device` setting turned into a libtorch device.

use anyhow::Result;
use tch::Device;

use crate::config::DeviceChoice;
use crate::error::Error;
use crate::torch_ext::cuda::cuda_available;

/// Picks the device for a `device` setting: "auto" (CUDA when available), "cpu" or "cuda".
pub fn resolve_device(setting: DeviceChoice) -> Result<Device> {
    match setting {
        DeviceChoice::Auto if cuda_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Auto | DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if cuda_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => {
            Err(Error::usage("device \"cuda\" requested but no CUDA device is available").into())
        }
    }
}
