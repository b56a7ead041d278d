# Contract-test app (not upstream): selects the optuna sweeper and sets nothing else.
import hydra
from omegaconf import DictConfig


@hydra.main(config_path="minimal-conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return float(cfg.x)


if __name__ == "__main__":
    main()
