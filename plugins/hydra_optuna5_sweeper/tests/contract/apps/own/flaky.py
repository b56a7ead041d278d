# Contract-test app (not upstream): a sphere whose trials with x > 3 fail, either by
# raising (fail_mode=raise) or by returning a value that is not float-castable
# (fail_mode=string).
import hydra
from omegaconf import DictConfig


@hydra.main(config_path="flaky-conf", config_name="config")
def flaky(cfg: DictConfig) -> float:
    x: float = cfg.x
    y: float = cfg.y
    if x > 3:
        if cfg.fail_mode == "raise":
            raise ValueError(f"flaky: x={x} > 3")
        return "not-a-number"  # type: ignore[return-value]
    return x**2 + y**2


if __name__ == "__main__":
    flaky()
