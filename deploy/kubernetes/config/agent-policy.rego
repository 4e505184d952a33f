# Kata agent policy for the attestfl aggregator pod: part of the measured init-data, so the
# host cannot relax it without changing HOST_DATA / MRCONFIGID.
#
# What it does: the host may create and run the pod's containers and read their logs
# (stdout/stderr; the aggregator logs nothing secret), but may not execute commands in them,
# write to their stdin, pause them, change the guest's policy, hotplug memory or trace them.
# What it does not do: pin the container image digest, command and mounts per container.
# For production, generate a policy that does (kata-containers' `genpolicy` tool on the
# rendered manifest), put it here, and re-render: see deploy/kubernetes/README.md.
package agent_policy

default AddARPNeighborsRequest := true
default AddSwapRequest := false
default CloseStdinRequest := false
default CopyFileRequest := true
default CreateContainerRequest := true
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default ExecProcessRequest := false
default GetMetricsRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default MemHotplugByProbeRequest := false
default OnlineCPUMemRequest := true
default PauseContainerRequest := false
default PullImageRequest := true
default ReadStreamRequest := true
default RemoveContainerRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true
default ReseedRandomDevRequest := false
default ResumeContainerRequest := false
default SetGuestDateTimeRequest := false
default SetPolicyRequest := false
default SignalProcessRequest := true
default StartContainerRequest := true
default StartTracingRequest := false
default StatsContainerRequest := true
default StopTracingRequest := false
default TtyWinResizeRequest := false
default UpdateContainerRequest := false
default UpdateEphemeralMountsRequest := false
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default WaitProcessRequest := true
default WriteStreamRequest := false
