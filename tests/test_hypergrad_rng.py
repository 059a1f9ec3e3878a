"""Random-state replay for the finite-difference passes covers every device type the tensors live on, or refuses
clearly. Accelerators are not available here, so their device modules are replaced by recording fakes."""
import pytest
import torch

import hypergrad


class FakeGenerators:
    """A device module with one integer "random state" per device; draw() advances device 0."""

    def __init__(self, devices=2):
        self.states = [torch.tensor([10 * i]) for i in range(devices)]

    def draw(self):
        self.states[0] = self.states[0] + 1
        return int(self.states[0])


class AllDevices(FakeGenerators):
    """Like torch.cuda / torch.xpu: get_rng_state_all / set_rng_state_all."""

    def get_rng_state_all(self):
        return [s.clone() for s in self.states]

    def set_rng_state_all(self, states):
        self.states = [s.clone() for s in states]


class CurrentDevice(FakeGenerators):
    """Like torch.mps: one device, get_rng_state / set_rng_state."""

    def __init__(self):
        super().__init__(devices=1)

    def get_rng_state(self):
        return self.states[0].clone()

    def set_rng_state(self, state):
        self.states[0] = state.clone()


@pytest.fixture
def fake_device(monkeypatch):
    """Install a fake device module for device type "xpu"; returns a setter choosing the module."""
    real = torch.get_device_module

    def install(module):
        monkeypatch.setattr(torch, "get_device_module",
                            lambda device=None: module if str(device) == "xpu" else real(device))
        return module
    return install


@pytest.mark.parametrize("module_class", [AllDevices, CurrentDevice])
def test_replay_covers_the_device_type_of_the_tensors(fake_device, module_class):
    fake = fake_device(module_class())
    state = hypergrad.capture_rng_state([torch.device("xpu", 0)])
    first = fake.draw()
    fake.draw()
    before_block = [s.clone() for s in fake.states]
    with hypergrad.replay_rng_state(state):
        assert fake.draw() == first  # the block draws what the captured state draws
    assert all(torch.equal(a, b) for a, b in zip(fake.states, before_block))  # and leaves the state as it found it


def test_replay_still_covers_the_cpu(fake_device):
    fake_device(AllDevices())
    state = hypergrad.capture_rng_state(["xpu", "cpu"])
    first = torch.rand(3)
    with hypergrad.replay_rng_state(state):
        assert torch.equal(torch.rand(3), first)


def test_device_type_without_random_state_is_refused():
    with pytest.raises(ValueError, match="cannot replay the random state of device type 'meta'"):
        hypergrad.capture_rng_state([torch.device("meta")])


def test_device_module_without_rng_functions_is_refused(fake_device):
    fake_device(object())
    with pytest.raises(ValueError, match="device type 'xpu'.*method='exact'"):
        hypergrad.capture_rng_state(["xpu"])


def test_finite_difference_refuses_tensors_it_cannot_replay():
    w = torch.ones(3, device="meta", requires_grad=True)
    a = torch.ones(3, device="meta", requires_grad=True)
    train = lambda p, h: (p[0] * h[0]).sum()
    with pytest.raises(ValueError, match="cannot replay the random state of device type 'meta'"):
        hypergrad.mixed_vp_fd(train, [w], [a], [torch.ones(3, device="meta")])
    with pytest.raises(ValueError, match="cannot replay the random state of device type 'meta'"):
        hypergrad.unrolled_hypergrad(train, train, [w], [a], lr=0.1, method="finite_difference")
